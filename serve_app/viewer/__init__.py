"""The web viewer at `GET /`: one page, plain HTML/CSS/JS shipped in this package.

The page is assembled once (page.html with viewer.css, the per-type colours and viewer.js inlined)
and served with a Content-Security-Policy that allows exactly that inline style and script (by
their sha256), requests to this origin only (`connect-src 'self'`), and nothing else: no CDN, no
images, no frames, no form posts, so a note pasted in it can go nowhere but this service's own
`/v1/extract`. What changes per request (policy names, whether an API key is needed) travels in a
JSON data block, which a CSP does not treat as script.
"""

from __future__ import annotations

import base64
import colorsys
import hashlib
import json
from functools import cache
from pathlib import Path

from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES

HERE = Path(__file__).resolve().parent


def _colour(i: int, n: int, lightness: float, saturation: float) -> str:
    r, g, b = colorsys.hls_to_rgb(i / n, lightness, saturation)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def type_colours() -> dict[str, str]:
    """One colour per label: light fills for the 4 entity types, stronger underlines for the 16
    modifier types (hues spread evenly, so neighbours in the legend differ)."""
    colours = {t: _colour(i, len(ENTITY_TYPES), 0.82, 0.75) for i, t in enumerate(ENTITY_TYPES)}
    colours.update({t: _colour(i, len(MODIFIER_TYPES), 0.45, 0.7) for i, t in enumerate(MODIFIER_TYPES)})
    return colours


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@cache
def _assets() -> tuple[str, str, str]:
    """(page template, inline style, inline script), read once."""
    rules = "\n".join(f'[data-type="{t}"], [data-legend="{t}"] {{ --c: {c}; }}' for t, c in type_colours().items())
    style = (HERE / "viewer.css").read_text() + rules + "\n"
    script = (HERE / "viewer.js").read_text()
    return (HERE / "page.html").read_text(), style, script


@cache
def content_security_policy() -> str:
    _, style, script = _assets()
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src '{_sha256(script)}'",
            f"style-src '{_sha256(style)}'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def render_page(policies: list[str], default_policy: str, auth: bool, root_path: str = "") -> str:
    """The page for the running service: its policy names (the default selected), whether the
    API-key field is shown, and where `/v1/extract` is (under the app's route prefix)."""
    template, style, script = _assets()
    config = {
        "policies": policies,
        "default_policy": default_policy,
        "auth": auth,
        "extract_url": root_path.rstrip("/") + "/v1/extract",
    }
    # `<` escaped so that no string in the data block can close the <script> element.
    data = json.dumps(config).replace("<", "\\u003c")
    return template.replace("{{STYLE}}", style).replace("{{SCRIPT}}", script).replace("{{CONFIG}}", data)


HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
