#!/usr/bin/env python
"""Author a course notebook from a jupytext percent script, run it, and leave it clean and exported.

    python tools/nb.py build nbs/_src/03_memory.py   # -> nbs/03_memory.ipynb, executed (outputs kept), cleaned, exported
    python tools/nb.py src nbs/03_memory.ipynb       # -> nbs/_src/03_memory.py, to edit an existing notebook as text
    python tools/nb.py run nbs/03_memory.ipynb       # re-execute a notebook in place (outputs refreshed), clean, export

Notebooks are the source of truth; `nbs/_src/` is scratch (git-ignored, skipped by nbdev because of its `_`).
Execution uses `nbdev-test --save`, so cells flagged `notest`/`slow`/`cuda` are skipped exactly as in CI.
"""
import json, shutil, subprocess, sys
from pathlib import Path

KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

def sh(*args): subprocess.run(args, check=True)

def tidy(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    nb["metadata"] = {"kernelspec": KERNEL, **{k: v for k, v in nb["metadata"].items() if k not in ("jupytext", "kernelspec")}}
    Path(nb_path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

def run(nb_path):
    sh("nbdev-export")
    sh("nbdev-test", str(nb_path), "--save")
    sh("nbdev-clean", "--fname", str(nb_path))
    sh("nbdev-export")

def build(src):
    src = Path(src)
    out = src.parent.parent / (src.stem + ".ipynb")
    tmp = out.with_name("_tmp_" + out.name)   # `_` keeps a half-written notebook away from other exports
    if out.exists(): shutil.copy(out, tmp)  # --update keeps the cell ids (and so the diffs small) of cells that didn't change
    sh("jupytext", "--quiet", "--to", "ipynb", *(["--update"] if tmp.exists() else []), str(src), "-o", str(tmp))
    tidy(tmp)
    tmp.replace(out)
    run(out)

def src(nb_path):
    nb_path = Path(nb_path)
    dest = nb_path.parent / "_src" / (nb_path.stem + ".py")
    dest.parent.mkdir(exist_ok=True)
    sh("jupytext", "--quiet", "--to", "py:percent", str(nb_path), "-o", str(dest))

if __name__ == "__main__":
    cmd, arg = sys.argv[1], sys.argv[2]
    {"build": build, "run": run, "src": src}[cmd](arg)
