"""The prelude of a script run in a fresh interpreter where the project cannot be imported: the repo
off sys.path and a meta-path finder failing every `ring_lightning` import (the package is installed
editable, so sys.path alone is not enough). Used by the export tests (plain transformers / vLLM load
an export without the project). The script must define REPO before this prelude."""

BLOCK_PROJECT = r'''
import importlib.abc, json, sys
sys.path = [p for p in sys.path if p not in ("", ".", REPO)]

class NoRingLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ring_lightning":
            raise ImportError("ring_lightning is blocked in this interpreter")

sys.meta_path.insert(0, NoRingLightning())
'''
