"""Worker for the FSDP pruning test: ``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_prune_worker.py
DIR`` (gloo on the CPU).

accelerate only turns on FSDP for GPU-type backends, so this worker shards the student itself with torch's FSDP2
(``fully_shard`` on every encoder layer, then on the model: the layout of examples/accelerate_configs/fsdp.yaml) and
runs the pruning step by hand: sampled gates on the sharded student, the Lagrangian, one AdamW for the weights and
one for the gates (their gradients averaged over the processes). Then ``materialize`` on the sharded model, which
gathers the full parameters. Per rank it writes the masked logits of the sharded student, the logits of the
materialised model, its weights and config sizes, and facts about the sharding.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distillation_helpers import tiny_batch, tiny_config  # noqa: E402

from efficientvlm import EfficientVLMForVisualQuestionAnswering as HEAD  # noqa: E402
from efficientvlm.pruning import ModalAdaptiveL0Module, gates_applied, layer_sizes, materialize  # noqa: E402
from efficientvlm.pruning.structure import MODALITIES, encoder_layers  # noqa: E402


def main(output_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    student = HEAD(tiny_config(vision_layers=2, text_layers=1, fusion_layers=1))
    l0 = ModalAdaptiveL0Module(student.config, 0.4, prune=("heads", "ffn", "blocks"), warmup_steps=1)
    l0_optimizer = l0.create_optimizer(0.1)

    mesh = init_device_mesh("cpu", (world,))
    for modality in MODALITIES:
        for layer in encoder_layers(student, modality):
            fully_shard(layer, mesh=mesh)
    fully_shard(student, mesh=mesh)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)

    batch = tiny_batch(HEAD, batch=2, seed=10 + rank)  # every process its own examples
    for step in range(3):
        zs = l0()
        with gates_applied(student, zs):  # kept through backward
            loss = student(**batch).loss + l0.lagrangian(l0.target_at(step))
            loss.backward()
        for parameter in l0.parameters():
            dist.all_reduce(parameter.grad)
            parameter.grad /= world
        optimizer.step()
        l0_optimizer.step()
        l0.clamp_()
        optimizer.zero_grad()
        l0_optimizer.zero_grad()

    final = {m: [{k: v.detach().clone() for k, v in layer.items()} for layer in layers]
             for m, layers in l0.budget_gates().items()}
    final["fusion"][0]["ffn_block"] = torch.tensor(0.0)  # a block gate on a sharded layer: must reach its forward
    final["vision"][1]["attention_block"] = torch.tensor(0.0)

    inputs = tiny_batch(HEAD, batch=3, seed=3)
    inputs.pop("labels")
    student.eval()
    with torch.no_grad(), gates_applied(student, final):
        masked = student(**inputs).logits
    with torch.no_grad():
        dense = student(**inputs).logits
    pruned = materialize(student, final)  # gathers the full parameters on every process
    with torch.no_grad():
        materialised = pruned.eval()(**inputs).logits

    weight = encoder_layers(student, "fusion")[0].mlp.fc1.weight
    torch.save({
        "masked": masked, "dense": dense, "materialised": materialised,
        "pruned_state": {k: v.detach().clone() for k, v in pruned.state_dict().items()},
        "pruned_sizes": layer_sizes(pruned.config),
        "pruned_type": type(pruned).__name__,
        "pruned_has_dtensor": any(isinstance(p, DTensor) for p in pruned.parameters()),
        "sharded": isinstance(weight, DTensor), "local_rows": weight.to_local().shape[0], "rows": weight.shape[0],
        "gates": {k: v.detach().clone() for k, v in l0.state_dict().items()},
    }, f"{output_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
