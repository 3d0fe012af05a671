"""The recipe's command-line flags, written once for the two jobs that fit windows: the batch
training (`pipelines.train`) and the stream service (`pipelines.stream`)."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.training.feature_transform import DEFAULT_TRANSFORM, TRANSFORMS
from pipelines.training.fitting import DEFAULT_SPAN, MODES
from pipelines.training.selection import (
    DEFAULT_K_RANGE,
    DEFAULT_MIN_CLUSTER_SHARE,
    DISTANCE_MEASURES,
)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--mode, --span, --k, --k-min, --k-max, --min-cluster-share, --transform, --seed, ..."""
    parser.add_argument("--mode", choices=MODES, default="cumulative")
    parser.add_argument(
        "--span", type=int, default=DEFAULT_SPAN, help="windows per model in the sliding mode"
    )
    parser.add_argument("--k", type=int, default=0, help="fixed k; 0 = choose by silhouette")
    parser.add_argument("--k-min", type=int, default=DEFAULT_K_RANGE[0])
    parser.add_argument("--k-max", type=int, default=DEFAULT_K_RANGE[1])
    parser.add_argument(
        "--min-cluster-share",
        type=float,
        default=DEFAULT_MIN_CLUSTER_SHARE,
        help="a k with a cluster below this share of the customers is not chosen",
    )
    parser.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default=DEFAULT_TRANSFORM,
        help="of the three totals before scaling: sign(x) * log1p(|x|), or none",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--distance-measure", choices=DISTANCE_MEASURES, default="euclidean")


def recipe_choices(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed recipe flags as `fitting.Spec` keyword arguments (Spec checks them)."""
    return {
        "mode": args.mode,
        "span": args.span,
        "k": args.k or None,
        "k_range": (args.k_min, args.k_max),
        "seed": args.seed,
        "max_iter": args.max_iter,
        "distance_measure": args.distance_measure,
        "transform": args.transform,
        "min_cluster_share": args.min_cluster_share,
    }
