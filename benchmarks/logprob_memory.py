"""Peak memory of token_logprobs_and_entropy (chunked) vs naive log_softmax on [2, 2048, 32000] bf16 logits.

Usage: python benchmarks/logprob_memory.py naive|1024|256   (prints forward / forward+backward peak MiB)
"""
import ctypes, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from ring_lightning.rl.losses import token_logprobs_and_entropy
libc = ctypes.CDLL("libc.so.6")
class MI2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = MI2
def inuse():
    m = libc.mallinfo2(); return m.uordblks + m.hblkhd
class Peak(TorchDispatchMode):
    def __init__(self): super().__init__(); self.base = inuse(); self.peak = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, inuse() - self.base)
        return out
torch.set_num_threads(1)
B, T, V = 2, 2048, 32000
logits = torch.empty(B, T, V, dtype=torch.bfloat16).normal_().requires_grad_()
tg = torch.randint(0, V, (B, T))
MiB = 2**20
mode = sys.argv[1]
with Peak() as m:
    if mode == "naive":
        lsm = torch.log_softmax(logits.float(), -1)
        lp = lsm.gather(-1, tg.unsqueeze(-1)).squeeze(-1); ent = -(lsm.exp() * lsm).sum(-1)
        del lsm
    else:
        lp, ent = token_logprobs_and_entropy(logits, tg, chunk_size=int(mode))
    fwd = m.peak
    (lp.sum() + ent.sum()).backward()
print(f"{mode:>6}: peak in-use memory beyond the bf16 logits: forward {fwd/MiB:.0f} MiB, fwd+bwd {m.peak/MiB:.0f} MiB "
      f"(one fp32 [B,T,V] = {B*T*V*4/MiB:.0f} MiB, bf16 grad = {B*T*V*2/MiB:.0f} MiB)")
