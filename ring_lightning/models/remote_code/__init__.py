"""The BailingMoe model code that ships inside every export (HF "remote code").

`configuration_bailing_moe.py`, `modeling_bailing_moe.py` and `routing_bailing_moe.py` import only
torch, transformers and each other (relative imports), never ring_lightning: ring_lightning trains
with these classes, and `save_pretrained` copies the three files next to the weights and writes
`auto_map` into config.json (the classes are registered for the Auto classes in
`ring_lightning/models/__init__.py`), as the published Ling / Ring checkpoints do. See docs/exports.md.
"""
