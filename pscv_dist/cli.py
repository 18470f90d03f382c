"""The ``pscv`` command: a thin dispatcher; each sub-command's work lives in the library."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile

from .errors import ConfigError, cli_boundary


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _ints(text: str | None, flag: str) -> list[int] | None:
    """``--budgets 800,3000`` as integers; anything else is refused naming the flag."""
    if not text:
        return None
    try:
        return [int(v) for v in _csv(text)]
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected comma-separated integers") from None


def _cmd_prepare(args) -> int:
    from .data.prepare import PrepareConfig, prepare
    from .data.synthetic import write_phantoms

    if args.synthetic is not None:
        if args.src is not None:
            args.out, args.src = args.src, None
        if args.out is None:
            raise ConfigError("usage: pscv prepare --synthetic N OUT")
    elif args.src is None or args.out is None or args.layout is None:
        raise ConfigError("usage: pscv prepare SRC OUT --layout LAYOUT (or --synthetic N OUT)")

    def run(src: str, layout: str) -> str:
        cfg = PrepareConfig(src=src, out=args.out, layout=layout, size=args.size, seed=args.seed,
                            workers=args.workers, cases=_csv(args.cases) if args.cases else None,
                            folds=args.folds, per_class=args.points_per_class,
                            include_background=not args.no_background_points,
                            classes=_csv(args.classes) if args.classes else None,
                            normalization=args.normalization, overwrite=args.overwrite,
                            skip_empty=args.skip_empty, clicks=args.clicks, clicks_format=args.clicks_format,
                            clicks_ignore=args.clicks_ignore, clicks_partial=args.clicks_partial)
        return prepare(cfg)

    if args.synthetic is not None:
        if args.phantom_dir:
            out = run(str(write_phantoms(args.phantom_dir, args.synthetic, seed=args.seed)), "nifti")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = run(str(write_phantoms(tmp, args.synthetic, seed=args.seed)), "nifti")
    else:
        out = run(args.src, args.layout)
    print(f"wrote {out}")
    return 0


def _cmd_clicks(args) -> int:
    from .data.clicks import export_store_clicks

    written = export_store_clicks(args.store, args.out, args.format, ignore=args.ignore)
    print(f"wrote {len(written)} file(s) to {args.out}")
    return 0


def _cmd_annotate(args) -> int:
    from .annotate import serve

    return serve(args.src, args.out, layout=args.layout, classes=_csv(args.classes) if args.classes else None,
                 checkpoint=args.checkpoint, model_uri=args.model_uri, tracking_uri=args.tracking_uri,
                 host=args.host, port=args.port)


def _cmd_inspect(args) -> int:
    from .data import SliceStore
    from .data.inspect import format_summary
    from .data.store import failed_names

    store = SliceStore(args.store)  # refuses (exit 2) a store with missing files or inconsistent metadata
    summary = store.summary()
    if args.verify:
        report = store.verify_report()
        summary["verify_failed"] = failed_names(report)
        summary["verify_problems"] = report
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 1 if summary.get("verify_failed") else 0


def _cmd_evaluate(args) -> int:
    from .eval.run import run_evaluation

    run_evaluation(args.checkpoint, args.store, args.split, args.convention, args.edge_filter, args.out, args.plots)
    return 0


def _cmd_predict(args) -> int:
    from .eval.predict import plan_predictions, predict_pairs, write_predictions

    if bool(args.checkpoint) == bool(args.model_uri):
        raise ConfigError("give exactly one of --checkpoint CKPT or --model-uri models:/NAME@ALIAS")
    # every input and output is checked before the model is loaded and before anything is written
    pairs = plan_predictions(args.input, args.output, overwrite=args.overwrite)
    if args.checkpoint:
        from .model.bundle import load_model

        model, meta = load_model(args.checkpoint)
        written = predict_pairs(model, meta, pairs)
    else:
        from .tracking import load_registered_model

        # the registered pyfunc segmenter: the same eval.predict.segment, behind MLflow's signature
        written = write_predictions(load_registered_model(args.model_uri, args.tracking_uri).predict, pairs)
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_register(args) -> int:
    from .tracking import best_run, promote, register_run

    chosen = [flag for flag, v in (("--run", args.run), ("--best-of", args.best_of), ("--version", args.version))
              if v is not None]
    if len(chosen) != 1:
        raise ConfigError(f"give exactly one of --run RUN_ID, --best-of EXPERIMENT or --version V, found "
                         f"{' and '.join(chosen) or 'none'}")
    if args.version is not None:
        done = promote(args.name, args.version, args.alias, args.tracking_uri)
        print(f"alias {done.describe()}")
        return 0
    run_id = args.run
    if args.best_of is not None:
        run_id, value = best_run(args.best_of, args.metric, args.minimize, args.tracking_uri)
        print(f"best run of {args.best_of}: {run_id} ({args.metric} = {value:.4g})")
    done = register_run(run_id, args.name, args.alias, args.tracking_uri)
    print(f"registered {done.describe()}")
    return 0


def _cmd_train(args) -> int:
    from .train import main as train_main

    return train_main((["--config", args.config] if args.config else []) + (["-v"] if args.verbose else [])
                      + args.overrides)


def _cmd_tune(args) -> int:
    from .tune import TuneOptions, run_search

    summary = run_search(TuneOptions(
        out=args.out, config=args.config, space=args.space, overrides=args.overrides, num_samples=args.num_samples,
        search=args.search, scheduler=args.scheduler, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        max_concurrent=args.max_concurrent, address=args.address, num_cpus=args.num_cpus, resume=args.resume,
        grace_steps=args.grace_steps, reduction_factor=args.reduction_factor, seed=args.seed))
    best = summary["best"]
    print(f"best trial {best['trial_id']}: val_mean_dsc {best['best_dsc']:.4f} at step {best['best_step']}")
    if summary["order_note"]:
        print(f"  the answer may not repeat: {summary['order_note']}")
    for name in summary["files"]:
        print(f"  {name:18s} {summary['out']}/{name}")
    return 0


def _cmd_study(args) -> int:
    from pathlib import Path

    from .study import RunOptions, load_study, run_study, write_report

    if args.from_csv and args.action != "report":
        raise ConfigError("--from-csv goes with `pscv study report`: it rebuilds tables, it runs nothing")
    study = load_study(args.study)
    out = Path(args.out)
    if args.action == "run":
        res = run_study(study, RunOptions(out=out, methods=args.methods and _csv(args.methods),
                                          budgets=_ints(args.budgets, "--budgets"),
                                          seeds=_ints(args.seeds, "--seeds"),
                                          parallel=args.parallel, threads=args.threads, address=args.address,
                                          cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                                          dry_run=args.dry_run))
        if args.dry_run:
            print(f"{res['done']} run(s) done, {res['todo']} to run")
            return 0
        if res["failed"]:
            print(f"{len(res['failed'])} run(s) failed: {', '.join(res['failed'])} (logs in {out / 'logs'})")
        if res["skipped"]:
            print(f"{len(res['skipped'])} run(s) not run, their search has no best trial: {', '.join(res['skipped'])} "
                  f"(logs in {out / 'logs'})")
    rep = write_report(study, out, overlays=not args.no_overlays, from_csv=args.from_csv and Path(args.from_csv))
    print(f"{rep['finished']} of {rep['total']} runs finished; report: {rep['report']}, per run: {rep['runs']}")
    return 1 if args.action == "run" and (res["failed"] or res["skipped"]) else 0


def _cmd_bench(args) -> int:
    from .config import AugmentConfig
    from .data.bench import bench_input

    res = bench_input(args.store, workers=args.workers, batch=args.batch, steps=args.steps, warmup=args.warmup,
                      split=args.split, cache=args.cache, shuffle=args.shuffle,
                      augment=AugmentConfig(backend=args.augment))
    print(res.table())
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, workers=args.nproc, iterations=args.iterations)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # the choices come from the modules that own them (one list each)
    from .data.sources import LAYOUTS
    from .data.volumes import NORMALIZATIONS
    from .eval.metrics import CONVENTIONS

    parser = argparse.ArgumentParser(prog="pscv", description="Point-supervised contrastive variance segmentation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert a dataset into a Zarr v3 store with point labels")
    p.add_argument("src", nargs="?", help="source folder (omit with --synthetic)")
    p.add_argument("out", nargs="?", help="output store: a folder or an fsspec URL")
    p.add_argument("--layout", choices=list(LAYOUTS))
    p.add_argument("--synthetic", type=int, metavar="N", help="generate N phantoms and convert them")
    p.add_argument("--phantom-dir", help="keep the generated phantom NIfTI files here")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the point labels")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cases", help="comma-separated case ids to convert (default: all)")
    p.add_argument("--folds", type=int, default=5, help="patient folds to record")
    p.add_argument("--points-per-class", type=int, default=1)
    p.add_argument("--no-background-points", action="store_true")
    p.add_argument("--classes", help="comma-separated class names, background first (nifti without dataset.json)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, help="override the layout's default")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is a complete pscv store (anything else at OUT is refused)")
    p.add_argument("--skip-empty", action="store_true",
                   help="skip, with a warning, cases whose image is all zero or label all background "
                        "(default: refuse them)")
    p.add_argument("--clicks", help="real annotations instead of simulated clicks: a folder of 3D Slicer "
                                    "<case>.mrk.json, a folder of sparse NIfTI maps, a .csv file, or (h5-key) a key of "
                                    "the source's HDF5 files, e.g. scribble")
    p.add_argument("--clicks-format", choices=["slicer", "nifti", "csv", "h5-key"],
                   help="format of --clicks (default: detected from it; h5-key must be given)")
    p.add_argument("--clicks-ignore", type=int, help="'not annotated' value of sparse maps (nifti: 255, h5-key: K)")
    p.add_argument("--clicks-partial", action="store_true",
                   help="cases without annotations get simulated clicks from their dense label (default: refused)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("clicks", help="`pscv clicks export STORE OUT --format F`: a store's imported annotations")
    p.add_argument("what", choices=["export"])
    p.add_argument("store")
    p.add_argument("out", help="folder (slicer, nifti) or .csv file / folder (csv); existing files are refused")
    p.add_argument("--format", required=True, choices=["slicer", "csv", "nifti"])
    p.add_argument("--ignore", type=int, default=255, help="'not annotated' value of exported NIfTI maps")
    p.set_defaults(func=_cmd_clicks)

    p = sub.add_parser("annotate", help="a local web page to click annotations (saved as 3D Slicer markups)")
    p.add_argument("src", help="a dataset folder (with --layout) or a pscv store")
    p.add_argument("--out", required=True, metavar="CLICKS_DIR",
                   help="folder of <case>.mrk.json files (created; existing ones are loaded and edited)")
    p.add_argument("--layout", choices=list(LAYOUTS), help="layout of SRC (omit for a store)")
    p.add_argument("--classes", help="comma-separated class names, background first (nifti without dataset.json)")
    p.add_argument("--checkpoint", help="a checkpoint folder (or its model.pt) for the prediction overlay")
    p.add_argument("--model-uri", help="an MLflow model URI (models:/NAME@ALIAS) for the prediction overlay")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --model-uri (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; the page has no login)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("inspect", help="print a store's summary")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every file and every case's volumes against the checksums recorded at conversion")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("evaluate", help="3D DSC / HD95 of a checkpoint on a split (torchrun-aware)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or its model.pt")
    p.add_argument("--store", required=True)
    p.add_argument("--split", required=True, help="e.g. test, fold0/val, all")
    p.add_argument("--convention", choices=CONVENTIONS, default="strict")
    p.add_argument("--edge-filter", type=int, default=0, metavar="PIXELS",
                   help="set the PIXELS columns nearest the left/right edges to background (Synapse: 50); "
                        "0 <= PIXELS < half the narrowest case width")
    p.add_argument("--out", help="write results.json here")
    p.add_argument("--plots", help="folder for the box plot and best/worst overlays")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train (also: torchrun ... -m pscv_dist.train)")
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="Ray Tune search of a config's keys (default: loss.lambda_cv and loss.tau)")
    p.add_argument("--config", help="base config: a YAML file or preset name (not needed with --resume)")
    p.add_argument("--out", required=True, help="search folder: trials, MLflow store, results")
    p.add_argument("--space", help="search space YAML (default: tune/spaces/pscv.yaml)")
    p.add_argument("--num-samples", type=int, default=8, help="trials to sample (x every grid value)")
    p.add_argument("--search", choices=["random", "optuna"], default="random")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha", help="ASHA on the training step")
    p.add_argument("--workers-per-trial", type=int, default=1, help="W > 1: each trial is a W-worker Ray Train run")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    p.add_argument("--address", help="join a Ray cluster (auto or ray://HOST:10001); default: a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: this machine's)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--grace-steps", type=int, default=None, help="ASHA: steps before a trial can be stopped "
                   "(default: train.val_every)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep the best 1/F at each rung")
    p.add_argument("--seed", type=int, default=0, help="seed of the search algorithm")
    p.add_argument("overrides", nargs="*", help="section.key=value applied to the base config")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("study", help="run a study file (methods x budgets x seeds, resumable) or rebuild its report")
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("study", help="study YAML file (e.g. studies/acdc_cpu.yaml)")
    p.add_argument("--out", required=True, help="study folder: runs, searches, MLflow store, report")
    p.add_argument("--methods", help="comma-separated subset of the study's methods")
    p.add_argument("--budgets", help="comma-separated subset of its budgets")
    p.add_argument("--seeds", help="comma-separated subset of its seeds")
    p.add_argument("--parallel", type=int, default=1, help="runs at once on this machine (cores split evenly unless --threads)")
    p.add_argument("--threads", type=int, help="threads of each run on this machine (default: cores // --parallel), "
                   "e.g. 1 for two study commands side by side on 2 cores; not a search's trials "
                   "(each takes the CPUs Ray gives it)")
    p.add_argument("--address", help="run each run as a Ray task: auto or ray://HOST:10001 (a cluster), local (a fresh Ray here)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="with --address: CPUs each run asks Ray for")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="with --address: GPUs each run asks Ray for")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--no-overlays", action="store_true", help="report: skip the overlay figure (it loads every model)")
    p.add_argument("--from-csv", help="report: the tables from a study's runs.csv alone (when the run folders are gone)")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("bench", help="measure this machine: `pscv bench input STORE` times the trainer's input path")
    p.add_argument("what", choices=["input"])
    p.add_argument("store")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (data.num_workers)")
    p.add_argument("--batch", type=int, default=12, help="slices per step")
    p.add_argument("--steps", type=int, default=100, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--split", default="all")
    p.add_argument("--cache", default="auto", choices=["auto", "memory", "shards", "none"])
    p.add_argument("--shuffle", default="global", choices=["global", "window"])
    p.add_argument("--augment", default="kornia", choices=["kornia", "dali", "none"])
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="phantoms -> store -> 2-rank training -> evaluation -> MLflow, on CPU")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--iterations", type=int, default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("register", help="register a run's segmenter in the MLflow registry, or move an alias")
    p.add_argument("--run", metavar="RUN_ID", help="the training run whose segmenter to register")
    p.add_argument("--best-of", metavar="EXPERIMENT", help="register the finished run with the best --metric")
    p.add_argument("--metric", default="val_mean_dsc", help="metric that ranks --best-of runs (default: val_mean_dsc)")
    p.add_argument("--minimize", action="store_true", help="lower --metric is better (e.g. val_mean_hd95)")
    p.add_argument("--version", metavar="V", help="promote this existing version (moves --alias to it)")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", default="champion", help="alias to point at the version (default: champion; "
                                                        "'latest' is reserved by MLflow)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("predict", help="segment NIfTI volumes (file or folder)")
    p.add_argument("--checkpoint")
    p.add_argument("--model-uri", help="an MLflow registry URI, e.g. models:/pscv@champion")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --model-uri (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("input", help="a .nii / .nii.gz file or a folder of them")
    p.add_argument("output", help="a file (for a file input) or a folder; never an input")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli_boundary(args.command, lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
