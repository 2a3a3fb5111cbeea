"""Optuna's RDB storage hand-out throughput, measured like `mmrl-hpo storage-bench` measures ours.

`workers` processes each open the same study through `optuna.storages.RDBStorage` on PostgreSQL and run
`study.optimize` with the random sampler and a trivial objective (x**2) for their share of `trials`. The clock
starts when every worker has imported Optuna and loaded the study, and stops when the last one is done. The
storage's database is created if missing; the study is deleted afterwards. Prints one JSON line:
{"storage", "version", "workers", "trials", "seconds", "trials_per_s"}.

Needs optuna, sqlalchemy and psycopg2-binary (`pip install optuna sqlalchemy psycopg2-binary`).
"""

import argparse
import json
import multiprocessing as mp
import os
import time


def ensure_database(url):
    """Creates the database of a SQLAlchemy PostgreSQL URL when it does not exist."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    admin = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
        ).scalar()
        if not exists:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def objective(trial):
    x = trial.suggest_float("x", -10.0, 10.0)
    return x * x


def worker(url, name, n_trials, seed, ready):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=seed))
    ready.wait()
    study.optimize(objective, n_trials=n_trials)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="postgresql+psycopg2://postgres@127.0.0.1:5432/mmrl_bench_optuna")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_database(args.storage)
    storage = optuna.storages.RDBStorage(args.storage)  # creates Optuna's tables outside the clock
    name = f"storage-bench-{os.getpid()}-{int(time.time())}"
    optuna.create_study(study_name=name, storage=storage, direction="minimize")
    shares = [args.trials // args.workers + (1 if i < args.trials % args.workers else 0) for i in range(args.workers)]
    ready = mp.Barrier(args.workers + 1)
    procs = [
        mp.Process(target=worker, args=(args.storage, name, share, i, ready)) for i, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    ready.wait()
    start = time.perf_counter()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    study = optuna.load_study(study_name=name, storage=storage)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE)
    optuna.delete_study(study_name=name, storage=storage)
    if failed or done != args.trials:
        raise SystemExit(f"optuna bench: {done} of {args.trials} trials complete, worker exit codes {failed}")
    print(
        json.dumps(
            {
                "storage": "optuna",
                "version": optuna.__version__,
                "workers": args.workers,
                "trials": args.trials,
                "seconds": seconds,
                "trials_per_s": args.trials / seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
