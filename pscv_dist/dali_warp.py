"""NVIDIA DALI backend of the augmentation warp (``augment.backend=dali``).

One pipeline per batch size: ``fn.external_source`` for the images, labels and per-sample matrices,
``fn.warp_affine`` (linear for images, nearest for labels). On a machine without a GPU the pipeline
runs on the CPU (``device_id=None``); with a GPU the warps run on it ("gpu" inputs).

DALI puts pixel centres at half-integers, our matrices at integers: for ``dst = A·src + t`` the
DALI translation is ``t + 0.5·(1 - A·1)``.
"""
from __future__ import annotations

import numpy as np
import torch


def to_dali_matrix(m: np.ndarray) -> np.ndarray:
    a, t = m[:, :2], m[:, 2]
    return np.concatenate([a, (t + 0.5 * (np.ones(2) - a @ np.ones(2)))[:, None]], axis=1).astype(np.float32)


class DaliWarp:
    def __init__(self, batch_size: int, gpu: bool = False, device_id: int | None = None, num_threads: int = 2):
        from nvidia.dali import fn, pipeline_def, types

        self.batch_size, self.gpu = batch_size, gpu

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=(device_id or 0) if gpu else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipe():
            dev = "gpu" if gpu else "cpu"
            img = fn.external_source(name="image", layout="HWC", dtype=types.FLOAT, device=dev)
            lab = fn.external_source(name="label", layout="HWC", dtype=types.FLOAT, device=dev)
            mat = fn.external_source(name="matrix", dtype=types.FLOAT)
            img = fn.warp_affine(img, matrix=mat, inverse_map=False, interp_type=types.INTERP_LINEAR, fill_value=0)
            lab = fn.warp_affine(lab, matrix=mat, inverse_map=False, interp_type=types.INTERP_NN, fill_value=0)
            return img, lab

        self.pipe = pipe()
        self.pipe.build()

    def __call__(self, image: torch.Tensor, label: torch.Tensor, mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = image.float().permute(0, 2, 3, 1).contiguous()  # B, H, W, 1
        lab = label.float()[..., None].contiguous()
        if not self.gpu:
            img, lab = img.cpu().numpy(), lab.cpu().numpy()
        self.pipe.feed_input("image", [x for x in img])
        self.pipe.feed_input("label", [x for x in lab])
        self.pipe.feed_input("matrix", [to_dali_matrix(m) for m in mats.cpu().numpy()])
        out_img, out_lab = self.pipe.run()
        if self.gpu:
            out_img, out_lab = out_img.as_cpu(), out_lab.as_cpu()
        new_img = torch.from_numpy(np.stack(out_img.as_array() if hasattr(out_img, "as_array") else
                                            [np.array(t) for t in out_img]))
        new_lab = torch.from_numpy(np.stack(out_lab.as_array() if hasattr(out_lab, "as_array") else
                                            [np.array(t) for t in out_lab]))
        new_img = new_img.permute(0, 3, 1, 2).to(image.device, image.dtype)
        return new_img, new_lab[..., 0].round().to(label.device, label.dtype)
