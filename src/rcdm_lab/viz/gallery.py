"""index.html: every figure under a folder, with the command that made it and its numbers, viewable offline."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
figure { border-top: 1px solid #ccc; margin: 0; padding: 1.5em 0; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 2px 4px; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 12px; }
"""


def write_gallery(root: str | Path, title: str = "rcdm_lab figures") -> Path:
    """Write root/index.html over every */figure.json below `root` (each next to the PNGs it names)."""
    root = Path(root)
    entries = []
    for record_path in sorted(root.glob("**/figure.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a figure being written right now; the next run lists it
        images = "".join(
            f'<p><img src="{html.escape(os.path.relpath(path, root))}" alt="{html.escape(key)}"></p>'
            for key, path in record.items()
            if key.endswith("_png") and path and Path(path).is_file()
        )
        numbers = {k: v for k, v in record.items() if not k.endswith("_png") and k not in ("command", "figure")}
        entries.append(
            f'<figure id="{html.escape(record_path.parent.name)}">'
            f"<h2>{html.escape(str(record.get('figure', record_path.parent.name)))}</h2>{images}"
            f"<figcaption><p><code>{html.escape(str(record.get('command', '')))}</code></p>"
            f"<details><summary>numbers</summary><pre>{html.escape(json.dumps(numbers, indent=2))}</pre>"
            f"</details></figcaption></figure>"
        )
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(entries)} figure(s) under <code>{html.escape(str(root))}</code>.</p>{''.join(entries)}"
            "</body></html>")
    index = root / "index.html"
    index.write_text(page)
    return index
