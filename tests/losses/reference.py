"""An independent, loop-based reference of the CV loss (METHOD.md), for the tests only."""
import math


def cv_reference(probs, images, present, positives, tau, classes="all", eps=1e-8, pool=None):
    """Mean over images of Σ_anchors ℓ(n, k); positives[n][k] = m or -1 (given, not drawn);
    negatives only from the images in ``pool`` when given."""
    b, kk = probs.shape[:2]
    ks = list(range(kk)) if classes == "all" else list(range(1, kk))
    maps = {}
    for n in range(b):
        x = images[n, 0].reshape(-1).double()
        for k in ks:
            p = probs[n, k].reshape(-1).double()
            c = (x * p).sum() / (p.sum() + eps)
            z = (x - c) ** 2 * p
            maps[n, k] = z / max(z.norm().item(), eps)
    total = 0.0
    for n in range(b):
        for k in ks:
            m = int(positives[n][k])
            if not present[n, k] or m < 0:
                continue
            s_pos = float(maps[n, k] @ maps[m, k]) / tau
            terms = [s_pos] + [float(maps[n, k] @ maps[i, j]) / tau
                               for i in range(b) for j in ks if i != n and j != k and present[i, j]
                               and (pool is None or i in pool)]
            top = max(terms)
            total += top + math.log(sum(math.exp(t - top) for t in terms)) - s_pos
    return total / b
