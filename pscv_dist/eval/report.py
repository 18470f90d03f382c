"""What people look at: a Markdown table, a per-class box plot, overlays of the best and worst cases."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import case_mean_dsc


def markdown_table(results: dict[str, Any]) -> str:
    unit = "mm" if "mean_hd95_mm" in results else "vox"
    key = "hd95_mm" if unit == "mm" else "hd95"
    lines = [f"| class | DSC | HD95 ({unit}) | n |", "|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for name, v in results["per_class"].items():
        lines.append(f"| {name} | {fmt(v['dsc'])} | {fmt(v.get(key, v['hd95']))} | {v['n']} |")
    mean_hd = results.get("mean_hd95_mm" if unit == "mm" else "mean_hd95")
    lines.append(f"| **mean** | **{fmt(results['mean_dsc'])}** | **{fmt(mean_hd)}** | {results['n_cases']} |")
    lines.append(f"\nconvention `{results['convention']}`; empty predictions: {results['n_empty_prediction']}")
    return "\n".join(lines)


def box_plot(results: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["per_class"])
    data = [[c[n]["dsc"] for c in results["per_case"] if c.get(n) is not None] for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("3D Dice per case")
    ax.set_ylim(0, 1)
    ax.set_title(f"mean DSC {results['mean_dsc']:.3f} ({results['convention']})" if results["mean_dsc"] is not None else "")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def overlays(store, predictions: dict[str, np.ndarray], results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Best and worst case by mean DSC: the middle slice of image, ground truth and prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # among the cases whose predictions this process holds (rank 0 holds its share under torchrun)
    ranked = sorted((r for r in results["per_case"] if r["case"] in predictions), key=case_mean_dsc)
    picks = {"worst": ranked[0]["case"], "best": ranked[-1]["case"]} if ranked else {}
    written = []
    k = store.num_classes
    for tag, case in picks.items():
        vol, pred = store.volume(case), predictions[case]
        z = int(np.argmax((vol["label"] > 0).sum(axis=(1, 2))))  # the slice with most foreground
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
        for ax, (title, lab) in zip(axes, (("image", None), ("ground truth", vol["label"][z]), ("prediction", pred[z]))):
            ax.imshow(vol["image"][z], cmap="gray")
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab, 0), cmap="tab10", vmin=0, vmax=max(k - 1, 1), alpha=0.5,
                          interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
        fig.suptitle(f"{tag}: {case} (mean DSC {case_mean_dsc(next(r for r in ranked if r['case'] == case)):.3f}, z={z})")
        fig.tight_layout()
        path = Path(out_dir) / f"overlay_{tag}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
