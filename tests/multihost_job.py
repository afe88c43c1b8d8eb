"""One process of a job over several, as each host of a pod slice runs it: sgm-jax commands one after another.

    python multihost_job.py COMMANDS.json [--coordinator HOST:PORT --num-processes N --process-id I] [--die-after B]

COMMANDS.json holds a JSON list of argument lists; the job's options are added to each. `--die-after B` makes
this process exit abruptly once it has computed B batches of a collection: a host lost in the middle of a job.
"""

import argparse
import json
import os
import sys

# One device per process, as one host; quick compiles, as the suite's (conftest.py): the job's models are tiny.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("commands")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes")
    parser.add_argument("--process-id")
    parser.add_argument("--die-after", type=int)
    args = parser.parse_args()
    job = []
    if args.coordinator:
        job = [
            "--coordinator",
            args.coordinator,
            "--num-processes",
            args.num_processes,
            "--process-id",
            args.process_id,
        ]
    if args.die_after is not None:
        from sgm_jax.responses import collect

        real, done = collect.pooled_batch, []

        def pooled_then_die(*a, **kw):
            if len(done) == args.die_after:
                os._exit(3)
            done.append(1)
            return real(*a, **kw)

        collect.pooled_batch = pooled_then_die
    from sgm_jax import cli

    with open(args.commands, encoding="utf-8") as f:
        commands = json.load(f)
    for argv in commands:
        cli.main(argv + job)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
