import torch

from pscv_dist.model.bundle import model_meta, save_model
from pscv_dist.model import UNet


def random_checkpoint(path, num_classes=4, size=32, mode="mr", seed=0, classes=None):
    """A model bundle of an untrained (seeded) UNet, as the trainer writes it."""
    torch.manual_seed(seed)
    model = UNet(num_classes=num_classes, base_width=4, depth=2)
    classes = classes or ["background"] + [f"c{i}" for i in range(1, num_classes)]
    meta = model_meta(model, classes, size, {"mode": mode}, num_classes)
    path.mkdir(parents=True, exist_ok=True)
    save_model(path / "model.pt", model, meta)
    return path
