"""``idglow serve``: deploy the generator on a running Ray cluster (Ray Serve replicas), or show its status."""

from __future__ import annotations

import argparse
import logging
import os

from idglow.commands.common import add_model_arguments, model_settings
from idglow.errors import InputError
from idglow.quantization import BACKENDS, QUANTIZATIONS

logger = logging.getLogger(__name__)

ADDRESS_ENV = "IDGLOW_RAY_ADDRESS"


def register(subparsers) -> None:
    """Add ``idglow serve`` to the command-line parser."""
    p = subparsers.add_parser(
        "serve",
        help="deploy the generator on a Ray cluster (one replica per GPU)",
        description="Deploy the generator on a running Ray cluster as Ray Serve replicas, each loading the model "
                    "once, and return when every replica is ready; or show the deployment's status. The app "
                    "sends generations to it with `python app.py --generator ray --ray-address ADDR`.",
    )
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help=f"the cluster's head, e.g. 127.0.0.1:6379 [{ADDRESS_ENV}]")
    p.add_argument("--status", action="store_true", help="print the deployment's status and exit (1 unless running)")
    p.add_argument("--name", default="idglow", help="Serve application name (default idglow)")
    r = p.add_argument_group("replicas")
    r.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas to run (default 1)")
    r.add_argument("--min-replicas", type=int, metavar="N", help="autoscaling: fewest replicas (with --max-replicas)")
    r.add_argument("--max-replicas", type=int, metavar="N", help="autoscaling: most replicas (with --min-replicas)")
    r.add_argument("--gpus-per-replica", type=float, metavar="G",
                   help="default: 1 when the cluster has GPUs (one replica per GPU), else 0 (CPU replicas)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C", help="CPUs Ray reserves per replica")
    r.add_argument("--torch-threads", type=int, metavar="T",
                   help="torch threads per replica (default: --cpus-per-replica on CPU replicas)")
    r.add_argument("--replica-nice", type=int, default=0, metavar="N",
                   help="run every replica thread at nice N or lower priority (0-19; default 0: as Ray starts "
                        "them): for replicas that share a machine's cores with the web app")
    add_model_arguments(p)
    m = p.add_argument_group("memory (smaller GPUs)")
    m.add_argument("--quantize", choices=QUANTIZATIONS, help="int8 weights for the transformer's blocks")
    m.add_argument("--quant-backend", choices=BACKENDS, default="auto", help="quantization library (default auto)")
    m.add_argument("--cpu-offload", action="store_true", help="diffusers' model CPU offload (CUDA only)")
    p.set_defaults(func=run)


def ray_address(args: argparse.Namespace) -> str:
    """--ray-address, else $IDGLOW_RAY_ADDRESS; one of them is required."""
    address = args.ray_address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise InputError(f"idglow serve needs --ray-address HOST:PORT (or {ADDRESS_ENV}): the head of a running "
                         "Ray cluster, e.g. started with `ray start --head --port 6379`")
    return address


def replica_plan(args: argparse.Namespace, cluster_gpus: float):
    """The ReplicaPlan of the flags: one GPU per replica when the cluster has GPUs and no device says cpu."""
    from idglow.serving import ReplicaPlan

    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 and (args.device or "cuda").startswith("cuda") else 0.0
    return ReplicaPlan(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                       num_gpus=gpus, num_cpus=args.cpus_per_replica)


def generator_options(args: argparse.Namespace, plan):
    """The GeneratorOptions of the flags (CPU replicas default to one torch thread per reserved CPU)."""
    from idglow.serving import GeneratorOptions

    threads = args.torch_threads
    if threads is None and plan.num_gpus == 0:
        threads = max(1, int(plan.num_cpus))
    return GeneratorOptions(model=model_settings(args), quantize=args.quantize, quant_backend=args.quant_backend,
                            cpu_offload=args.cpu_offload, torch_threads=threads, nice=args.replica_nice)


def show_status(address: str, name: str) -> int:
    """Print the deployment's status; 0 when it is running, 1 otherwise."""
    from idglow.serving import deployment_status

    status = deployment_status(address, name)
    if not status:
        print(f"no generator deployed as {name!r} on {address}")
        return 1
    replicas = ", ".join(f"{n} {state}" for state, n in sorted(status["replicas"].items())) or "none"
    print(f"{name} on {address}: application {status['application']}, deployment {status['deployment']}, "
          f"replicas: {replicas}")
    if status["message"]:
        print(status["message"])
    return 0 if status["application"] == "RUNNING" else 1


def run(args: argparse.Namespace) -> int:
    """``idglow serve``: deploy (or ``--status``); returns the exit code."""
    address = ray_address(args)
    if args.status:
        return show_status(address, args.name)
    import ray

    from idglow.serving import connect, deploy

    connect(address)
    plan = replica_plan(args, ray.cluster_resources().get("GPU", 0.0))
    options = generator_options(args, plan)
    kind = f"{plan.num_gpus:g} GPU" if plan.num_gpus else f"CPU, {options.torch_threads} torch thread(s)"
    print(f"deploying {args.name} on {address}: {plan.replicas} replica(s) ({kind} each)", flush=True)
    deploy(address, options, plan, args.name)
    return show_status(address, args.name)
