"""Write serve_app/configs/serve.production.yaml into rayservice.yaml's `serveConfigV2`, verbatim.

The RayService carries the Serve config as a string (a YAML block scalar); keeping it a copy of the
one production file means one place to change it and no drift. Run after editing the production
config:

    python deploy/kuberay/sync_serve_config.py          # rewrite the block
    python deploy/kuberay/sync_serve_config.py --check  # exit 1 if the block differs (what the test checks)

Only the block is rewritten; the rest of the manifest (and its comments) is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml"
PRODUCTION = REPO_ROOT / "serve_app" / "configs" / "serve.production.yaml"
KEY_LINE = "  serveConfigV2: |\n"
"""`spec.serveConfigV2` as a literal block; its content is indented by BLOCK_INDENT."""
BLOCK_INDENT = "    "


def render(manifest_text: str, serve_config_text: str) -> str:
    """`manifest_text` with the serveConfigV2 block replaced by `serve_config_text`."""
    if manifest_text.count(KEY_LINE) != 1:
        raise ValueError(f"expected exactly one line {KEY_LINE.strip()!r} in the manifest")
    if not serve_config_text.endswith("\n") or serve_config_text.endswith("\n\n"):
        # A `|` block keeps exactly one final newline: anything else would not round-trip.
        raise ValueError("the serve config must end with exactly one newline")
    head, rest = manifest_text.split(KEY_LINE)
    lines = rest.splitlines(keepends=True)
    # The block runs until the first non-blank line indented less than its content.
    end = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith(BLOCK_INDENT)), len(lines))
    block = "".join(BLOCK_INDENT + line if line.strip() else "\n" for line in serve_config_text.splitlines(True))
    return head + KEY_LINE + block + "".join(lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report whether the block is up to date.")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    wanted = render(current, PRODUCTION.read_text())
    if current == wanted:
        print(f"{MANIFEST.relative_to(REPO_ROOT)}: serveConfigV2 is up to date")
        return 0
    if args.check:
        print(
            f"{MANIFEST.relative_to(REPO_ROOT)}: serveConfigV2 differs from {PRODUCTION.relative_to(REPO_ROOT)}; "
            "run python deploy/kuberay/sync_serve_config.py",
            file=sys.stderr,
        )
        return 1
    MANIFEST.write_text(wanted)
    print(f"{MANIFEST.relative_to(REPO_ROOT)}: serveConfigV2 rewritten from {PRODUCTION.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
