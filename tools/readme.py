#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb, as `nbdev-readme` would (Quarto can't be installed here).

    python tools/readme.py           # write README.md
    python tools/readme.py --check   # exit 1, with a diff, if README.md is out of step with nbs/index.ipynb
"""
import difflib, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Written by tools/readme.py from nbs/index.ipynb: edit the notebook, not this file. -->\n\n"

def _src(cell): return ''.join(cell['source'])

def _outputs(cell):
    out = []
    for o in cell.get('outputs', []):
        if o['output_type'] == 'stream': out.append(''.join(o['text']))
        elif 'text/markdown' in o.get('data', {}): out.append(None); out.append(''.join(o['data']['text/markdown']))
        elif 'text/plain' in o.get('data', {}) and 'image/png' not in o['data']: out.append(''.join(o['data']['text/plain']))
    return out

def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb['cells']:
        src = _src(cell)
        if cell['cell_type'] == 'markdown':
            parts.append(re.sub(r'^> ', '', src, flags=re.M) if src.startswith('> ') else src)
            continue
        if cell['cell_type'] != 'code' or re.search(r'^#\|\s*(hide|export)', src, re.M): continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code: parts.append(f"```python\n{code}\n```")
        outs, md = _outputs(cell), False
        for o in outs:
            if o is None: md = True; continue
            parts.append(o.strip() if md else f"```\n{o.rstrip()}\n```")
    return HEADER + '\n\n'.join(p.strip('\n') for p in parts) + '\n'

if __name__ == '__main__':
    want, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        have = readme.read_text() if readme.exists() else ''
        if have != want:
            sys.stdout.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True), 'README.md', 'from nbs/index.ipynb'))
            sys.exit('README.md is out of step with nbs/index.ipynb: run `python tools/readme.py`.')
        print('README.md matches nbs/index.ipynb')
    else: readme.write_text(want); print('wrote README.md')
