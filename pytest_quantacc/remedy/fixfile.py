"""The verified remedy as YAML: a spec patch to print, and ``<spec stem>.fix.yaml`` with it applied.

The user's spec is never edited. The fix file rewrites only the patched quantization blocks, keeping the
user's comments and layout elsewhere (checked against the parsed result; flow-style specs fall back to a
full dump).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..files import write_text


def patch_yaml(patch: dict) -> str:
    """The patch as the YAML a user pastes into the model entry."""
    return yaml.safe_dump({"quantization": patch}, sort_keys=False, default_flow_style=None).rstrip()


def fix_path(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.fix.yaml")


def _last_line(node: yaml.Node) -> int:
    """The last line holding text of ``node`` (block collections end where the next token starts)."""
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        return _last_line(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _last_line(node.value[-1])
    end = node.end_mark
    return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line


def _spliced(text: str, blocks: dict[int, dict]) -> str | None:
    """``text`` with the ``quantization`` block of each model entry ``i`` replaced by ``blocks[i]`` (added when
    missing), every other line (comments included) kept as written. None when the layout is not block style.
    """
    root = yaml.compose(text)
    models = next((v for k, v in root.value if k.value == "models"), None) if isinstance(root, yaml.MappingNode) \
        else None
    if not isinstance(models, yaml.SequenceNode) or models.flow_style:
        return None
    lines = text.splitlines()
    edits = []  # (first line, last line inclusive or first - 1 for an insertion, new lines)
    for index, quantization in blocks.items():
        entry = models.value[index]
        if not isinstance(entry, yaml.MappingNode) or entry.flow_style or not entry.value:
            return None
        col = entry.value[0][0].start_mark.column
        new = [" " * col + line for line in yaml.safe_dump({"quantization": quantization}, sort_keys=False,
                                                           default_flow_style=False).splitlines()]
        pair = next(((k, v) for k, v in entry.value if k.value == "quantization"), None)
        if pair is not None:
            edits.append((pair[0].start_mark.line, _last_line(pair[1]), new))
        else:
            after = _last_line(entry) + 1
            edits.append((after, after - 1, new))
    for first, last, new in sorted(edits, reverse=True):
        lines[first:last + 1] = new
    return "\n".join(lines) + "\n"


def write_fix(spec_path: Path, patches: dict[int, dict]) -> Path:
    """Write ``<spec stem>.fix.yaml`` beside the spec: the spec with each model's verified patch applied.

    The user's spec is never modified; the fix file is a complete spec that can be run as is, diffed against
    the original, or merged by hand. Only the patched models' ``quantization`` blocks are rewritten, so the
    user's comments and layout survive everywhere else (a flow-style spec is rewritten whole).
    """
    text = spec_path.read_text()
    raw = yaml.safe_load(text)
    blocks = {i: {**(raw["models"][i].get("quantization") or {}), **patch} for i, patch in patches.items()}
    body = _spliced(text, blocks)
    if body is None or yaml.safe_load(body) != _applied(raw, blocks):
        body = yaml.safe_dump(_applied(raw, blocks), sort_keys=False)
    dest = fix_path(spec_path)
    header = (f"# {spec_path.name} with the remedies verified by pytest-quantacc applied (quantization keys of\n"
              f"# models {', '.join(str(raw['models'][i].get('name')) for i in patches)}). Generated; "
              f"{spec_path.name} is unchanged.\n")
    write_text(dest, header + body)
    return dest


def _applied(raw: dict, blocks: dict[int, dict]) -> dict:
    out = copy.deepcopy(raw)
    for index, quantization in blocks.items():
        out["models"][index]["quantization"] = quantization
    return out
