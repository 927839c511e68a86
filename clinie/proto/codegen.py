"""Regenerate the committed gRPC Python modules from clinie.proto: `python -m clinie.proto.codegen`.

The generated `clinie_pb2.py` / `clinie_pb2_grpc.py` are committed, so neither the server nor a
client needs grpcio-tools at run time. The price is that they can go stale when someone edits the
.proto; tests/unit/test_proto.py regenerates them with `generate` into a scratch folder and compares
bytes, so this module is the one place that knows the protoc command line.

The .proto is compiled from the repository root as `clinie/proto/clinie.proto` (not from its own
folder) because protoc derives the generated grpc module's import of the message module from that
path: this way it is `from clinie.proto import clinie_pb2`, which works from any working
directory, instead of a bare `import clinie_pb2` that only works with the folder on sys.path.

The output depends on the grpcio-tools version (the modules name it and check it at import), which
requirements.lock pins; after bumping it, regenerate and commit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# Include root: the folder holding the `clinie` package, i.e. the repository root in a checkout.
INCLUDE_ROOT = PROTO_DIR.parents[1]
PROTO_FILE = PROTO_DIR / "clinie.proto"
GENERATED = ("clinie_pb2.py", "clinie_pb2_grpc.py")


def generate(out_dir: Path | str) -> list[Path]:
    """Compile clinie.proto and write the generated modules (GENERATED) into `out_dir`.

    Returns the written paths. Raises RuntimeError with protoc's message when compilation fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rel = PROTO_FILE.relative_to(INCLUDE_ROOT)
    with tempfile.TemporaryDirectory(prefix="clinie-protoc-") as tmp:
        # protoc writes to <out>/clinie/proto/ (the package path of the .proto); compile into a
        # scratch folder and move the files, so `out_dir` may be any folder, the package included.
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{INCLUDE_ROOT}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            rel.as_posix(),
        ]
        proc = subprocess.run(cmd, cwd=INCLUDE_ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"protoc failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        written: list[Path] = []
        for name in GENERATED:
            target = out / name
            shutil.copyfile(Path(tmp) / rel.parent / name, target)
            written.append(target)
    return written


def main() -> None:
    """Regenerate the committed modules in place, next to clinie.proto."""
    for path in generate(PROTO_DIR):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
