"""Write synthetic phantoms (NIfTI, nifti layout): python data_prep/phantoms.py OUT [--n 20] [--seed 0]"""
import argparse

from pscv_dist.data.synthetic import write_phantoms

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"wrote {write_phantoms(a.out, a.n, seed=a.seed)}")
