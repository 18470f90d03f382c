"""Human-readable summary of a store (``pscv inspect``)."""
from __future__ import annotations

from typing import Any


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"store       {s['path']}  ({s['format']}, layout {s['layout']})",
        f"source      {s['source']}",
        f"cases       {s['n_cases']}   training slices {s['n_slices']} at {s['size']}x{s['size']}",
        f"classes     {', '.join(s['classes'])}   (ignore_index {s['ignore_index']})",
        f"intensity   normalisation {s['normalization']['mode']}",
        f"points      {s['points']}",
        f"spacing     {s['spacing'] or 'none in the source (metrics in voxels)'}",
        "splits      " + ", ".join(f"{k}: {v}" for k, v in s["splits"].items()),
        f"sha256      {s['sha256']}",
        "",
        f"{'class':<16}{'voxels':>14}{'slices':>10}",
    ]
    ann = s.get("annotations") or {}
    imported = ann.get("imported_voxels_per_class") or {}
    if ann.get("imported_cases"):
        lines[-1] += f"{'imported':>12}"
    for c in s["classes"]:
        lines.append(f"{c:<16}{s['voxels_per_class'][c]:>14,}{s['slices_per_class'][c]:>10}"
                     + (f"{imported.get(c, 0):>12,}" if ann.get("imported_cases") else ""))
    if ann:
        lines.append("")
        lines.append(f"annotations {ann['imported_cases']} case(s) imported"
                     + (" (" + ", ".join(f"{f}: {n}" for f, n in s["annotation_sources"]) + ")"
                        if s.get("annotation_sources") else "")
                     + f", {ann['simulated_cases']} simulated ({s['points']}); "
                     f"{ann['unlabelled_cases']} without a dense label")
        if ann["imported_cases"]:
            lines.append(f"            duplicates dropped {ann['imported_duplicates']}, voxels disagreeing with "
                         f"the dense label {ann['imported_disagree_with_label']}, training pixels dropped "
                         f"(two classes) {ann['resize_conflicts']}")
    if "verify_failed" in s:
        lines.append("")
        lines.append("verify      " + ("OK: every file matches its checksum, every volume its hash"
                                       if not s["verify_failed"] else f"DAMAGED: {s['verify_failed']}"))
        for name, problems in s.get("verify_problems", {}).items():
            for problem in problems[:5]:
                lines.append(f"  {name}: {problem}")
            if len(problems) > 5:
                lines.append(f"  {name}: ... and {len(problems) - 5} more")
    return "\n".join(lines)
