"""Write a variant of a dataset's plans (another slab depth, network width or CT scheme) for ablations.

The variant reads the same preprocessed arrays (its data identifier is unchanged) unless ``--ct_scheme``
is given, which changes the normalisation and so needs its own arrays: then the data identifier becomes
``<name>_data`` and ``unisyn_preprocess -d D -p NAME`` must run before training. Train a variant with
``unisyn_train D gfm 0 -p NAME --text_encoder <stage 1's text_encoder/>`` (stage 1 is stored per plans
name). Example (BENCHMARKS.md, "CPU preset"):

    python benchmarks/plans_variant.py 900 plansK8F32 --slab_depth 8 --feature_dim 32 --decoder 64 32 32
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from unisyn_v2.contracts.plans import NormalizationPlan, Plans
from unisyn_v2.experiment_planning.planner import DEFAULT_PLANS_NAME
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.paths import preprocessed_dir

logger = logging.getLogger(__name__)
LINEAR_CT_WINDOW = NormalizationPlan("ct_window", {"clip_low": -1024.0, "clip_high": 3071.0})


def write_variant(dataset: str, name: str, base: str = DEFAULT_PLANS_NAME, configuration: str = "2.5d",
                  slab_depth: int | None = None, network: dict | None = None, linear_ct: bool = False) -> Plans:
    """Copy ``base`` plans as ``name`` with the given configuration and normalisation overrides."""
    folder = preprocessed_dir() / resolve_dataset_name(dataset)
    plans = Plans.load(folder / f"{base}.json")
    config = plans.configuration(configuration)
    kwargs = {**config.network_kwargs, **(network or {})}
    if "num_blocks" in (network or {}) and "encoder_dilations" not in (network or {}):
        kwargs.pop("encoder_dilations", None)  # one dilation per block: a new depth starts undilated
    unet = dict(config.unet_kwargs)
    patch = list(config.patch_size)
    if slab_depth is not None:
        if not config.is_slab:
            raise SystemExit(f"--slab_depth applies to a 2.5D configuration, not {configuration}")
        patch[0] = slab_depth
        kwargs.update(in_channels=slab_depth, out_channels=slab_depth)
        unet.update(in_channels=slab_depth, out_channels=slab_depth)
    configurations = {**plans.configurations, configuration: replace(config, patch_size=tuple(patch),
                                                                      network_kwargs=kwargs, unet_kwargs=unet)}
    normalization = dict(plans.normalization)
    if linear_ct:  # other intensities, so other arrays: every configuration moves to the variant's folder
        normalization = {m: LINEAR_CT_WINDOW if p.scheme.startswith("ct_") else p for m, p in normalization.items()}
        configurations = {k: replace(c, data_identifier=f"{name}_data") for k, c in configurations.items()}
    variant = replace(plans, plans_name=name, normalization=normalization, configurations=configurations)
    variant.save(folder / f"{name}.json")
    logger.info("wrote %s", folder / f"{name}.json")
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("name", help="plans name of the variant")
    parser.add_argument("--base", default=DEFAULT_PLANS_NAME, help="plans to copy")
    parser.add_argument("-c", "--configuration", default="2.5d")
    parser.add_argument("--slab_depth", type=int, default=None, help="slices of a 2.5D slab (in and out channels)")
    parser.add_argument("--feature_dim", type=int, default=None)
    parser.add_argument("--encoder_width", type=int, default=None)
    parser.add_argument("--num_blocks", type=int, default=None)
    parser.add_argument("--decoder", type=int, nargs="+", default=None, help="decoder hidden widths")
    parser.add_argument("--dilations", type=int, nargs="+", default=None, help="one encoder dilation per block")
    parser.add_argument("--input_skip", action=argparse.BooleanOptionalAction, default=None,
                        help="the encoder's projection also sees the input (--no-input_skip: as the paper)")
    parser.add_argument("--linear_ct", action="store_true", help="the linear ct_window instead of the brain window")
    parser.add_argument("--affine_hidden", type=int, default=None,
                        help="hidden width of the GFM's prompt -> (alpha, beta) MLP (0: the paper's linear map)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    network = {k: v for k, v in (("feature_dim", args.feature_dim), ("encoder_width", args.encoder_width),
                                 ("num_blocks", args.num_blocks),
                                 ("decoder_hidden", list(args.decoder) if args.decoder else None),
                                 ("encoder_dilations", list(args.dilations) if args.dilations else None),
                                 ("encoder_input_skip", args.input_skip), ("affine_hidden", args.affine_hidden))
               if v is not None}
    write_variant(args.dataset, args.name, args.base, args.configuration, args.slab_depth, network, args.linear_ct)


if __name__ == "__main__":
    main()
