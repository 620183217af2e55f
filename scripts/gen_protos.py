"""Generate Python code (_pb2, _pb2_grpc, .pyi) for every proto under protos/ into one package.

protoc writes imports as ``from xrouter.<svc>.v1 import ...``; the generated code lives in
``xrouter.api`` so that it cannot collide with the service packages, so the imports are rewritten.
Usage: gen_protos.py OUT_DIR   (OUT_DIR becomes the ``xrouter.api`` package).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
IMPORT = re.compile(r"^(from|import) xrouter\.(\w+)\.v1", re.MULTILINE)


def main(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        generated = pathlib.Path(tmp) / "xrouter"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(generated, out)
    for path in out.rglob("*"):
        if path.suffix in {".py", ".pyi"}:
            path.write_text(IMPORT.sub(r"\1 xrouter.api.\2.v1", path.read_text()))
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text('"""Generated from protos/ by `make protos`; do not edit."""\n')


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
