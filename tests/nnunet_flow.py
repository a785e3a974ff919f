"""nnU-Net's own pipeline, end to end on CPU, with revunet's reversible plans (run by tests/test_nnunet.py).

Run as a script in a fresh process: nnU-Net reads its folders from the environment when it is
first imported, so ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` are set before
any nnU-Net import. Each step is nnU-Net's own API (the functions behind its command-line tools):
synthetic BraTS-like subjects -> nnU-Net's raw format -> fingerprint, ResEnc M planning,
preprocessing -> ``revunet nnunet-plans`` -> a few iterations of nnU-Net's default trainer ->
nnU-Net's predictor on one case. Writes what the test checks to ``<work>/flow.json``.

Usage: ``python tests/nnunet_flow.py WORK``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATASET_ID = 987
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetResEncUNetMPlans"
BUDGET = "0.08"  # GiB: the reversible network's step at the planned patch with a few more cases per batch


def _environment(work: Path) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_compile"] = "false"
    os.environ["nnUNet_def_n_proc"] = "1"  # nnU-Net's worker pools (export, prediction): one process on 2 cores


def prepare(work: Path) -> Path:
    """Synthetic subjects in nnU-Net's raw format, then nnU-Net's fingerprint, ResEnc M plans and preprocessing."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    from revunet.data.synth.generate import write_dataset
    from revunet.integrations.nnunet.raw import write_raw_dataset

    summary = write_dataset("brats", work / "synthetic", 5, 8.0, 0)
    write_raw_dataset(summary.root, work / "nnUNet_raw", DATASET_ID, "RevunetFlow")
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiments([DATASET_ID], "nnUNetPlannerResEncM")
    preprocess([DATASET_ID], PLANS, (CONFIGURATION,), (1,), show_progress_bar=False)
    return next((work / "nnUNet_preprocessed").glob(f"Dataset{DATASET_ID}_*"))


def reversible_plans(preprocessed: Path) -> str:
    """``revunet nnunet-plans`` on nnU-Net's plans, as a user runs it; returns the new identifier."""
    from revunet.cli import main

    arguments = [
        "nnunet-plans",
        "--plans",
        str(preprocessed / f"{PLANS}.json"),
        "--budget-gib",
        BUDGET,
        "--configurations",
        CONFIGURATION,
    ]
    assert main(arguments) == 0
    return f"{PLANS}_revunet{BUDGET}G"


def trainer_for(plans_identifier: str):
    """nnU-Net's default trainer as ``nnUNetv2_train`` makes it, for one epoch of two iterations."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(
        str(DATASET_ID), CONFIGURATION, 0, "nnUNetTrainer", plans_identifier, device=torch.device("cpu")
    )
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = 2
    trainer.num_val_iterations_per_epoch = 1
    return trainer


def gradients_inside_training_step(trainer) -> dict[str, float]:
    """One nnU-Net training step (its batch, loss and deep supervision) for the reversible network and its twin.

    The optimizer's step is replaced by a recorder of the gradients (after nnU-Net's clipping),
    so both networks start from the same weights; norms get random affines first, so that no
    branch starts at nnU-Net's zero initialisation.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    reversible = trainer.network
    with torch.no_grad():
        for module in reversible.modules():
            if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    manager = trainer.configuration_manager
    twin = get_network_from_plans(  # the plans' network, built as nnU-Net builds it, without memory saving
        manager.network_arch_class_name,
        {**manager.network_arch_init_kwargs, "memory_saving": False},
        manager.network_arch_init_kwargs_req_import,
        trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads,
        deep_supervision=True,
    )
    twin.load_state_dict(reversible.state_dict())
    batch = next(trainer.dataloader_train)
    recorded = {}

    def record() -> None:
        # nnU-Net's lowest deep-supervision output has weight 0: its head gets no gradient
        named = trainer.network.named_parameters()
        recorded[id(trainer.network)] = {n: p.grad.clone() for n, p in named if p.grad is not None}

    trainer.optimizer.step = record
    losses = {}
    for name, network in (("reversible", reversible), ("twin", twin)):
        trainer.network = network
        losses[name] = float(trainer.train_step(batch)["loss"])
    trainer.network = reversible
    ours, theirs = recorded[id(reversible)], recorded[id(twin)]
    assert ours.keys() == theirs.keys(), sorted(ours.keys() ^ theirs.keys())
    largest = max(float(g.abs().max()) for g in theirs.values())
    # Convolution biases before an instance norm have a gradient of 0 in exact arithmetic (the norm
    # removes the mean): theirs are rounding noise (1e-11), compared against the largest gradient.
    differences = {n: float((ours[n] - theirs[n]).abs().max()) for n in ours}
    significant = {n: float(theirs[n].abs().max()) for n in ours if float(theirs[n].abs().max()) > 1e-6 * largest}
    return {
        "relative_gradient_difference": max(differences[n] / size for n, size in significant.items()),
        "largest_difference_over_largest_gradient": max(differences.values()) / largest,
        "parameters_compared": len(ours),
        **{f"loss_{k}": v for k, v in losses.items()},
    }


def main(work: Path) -> dict[str, object]:
    _environment(work)
    preprocessed = prepare(work)
    identifier = reversible_plans(preprocessed)
    # augmentation in this process (no worker processes in a test); after planning, whose
    # VRAM estimate sets torch's thread count from the same variable
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = trainer_for(identifier)
    trainer.initialize()
    result: dict[str, object] = {"network": type(trainer.network).__name__, "plans": identifier}
    trainer.on_train_start()
    result.update(gradients_inside_training_step(trainer))
    trainer.on_train_end()
    trainer = trainer_for(identifier)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    result["log"] = [str(p) for p in Path(trainer.output_folder).glob("*")]
    result["prediction"] = predict_one(work, Path(trainer.output_folder).parent)
    (work / "flow.json").write_text(json.dumps(result, indent=2))
    return result


def predict_one(work: Path, model_folder: Path) -> str:
    """nnU-Net's predictor, from the trained folder, on the first raw case."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    raw = next((work / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*"))
    images = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    case = images.name.removesuffix("_0000.nii.gz")
    files = [str(raw / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(4)]
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,))
    out = work / "predicted" / case
    out.parent.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([files], [str(out)], save_probabilities=False, overwrite=True)
    return str(out) + ".nii.gz"


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
