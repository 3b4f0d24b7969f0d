"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages generated from the code are added to the
site at build time, so they are never committed and never stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_SPEC = importlib.util.spec_from_file_location("gen_docs", Path(__file__).with_name("gen_docs.py"))
assert _SPEC is not None and _SPEC.loader is not None
gen_docs = importlib.util.module_from_spec(_SPEC)
sys.modules["gen_docs"] = gen_docs
_SPEC.loader.exec_module(gen_docs)


def on_files(files: Files, config: Any) -> Files:
    for path, text in gen_docs.pages().items():
        if files.get_file_from_path(path) is not None:
            raise ValueError(f"docs/{path} is generated at build time by scripts/gen_docs.py: delete the file")
        files.append(File.generated(config, path, content=text))
    return files
