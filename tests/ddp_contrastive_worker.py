"""Worker for the gathered-contrastive tests: ``accelerate launch --multi_gpu --num_processes 2
tests/ddp_contrastive_worker.py OUTPUT_DIR`` (gloo DDP on the CPU).

Runs, in every process, the scenarios that ``tests/test_distributed_contrastive.py`` compares with one process on
the whole batch, and writes ``rank<r>.pt``:

* ``even`` / ``uneven``: the DDP-wrapped pre-training head on 2 + 2 and 3 + 2 rows (texts of different lengths,
  an image shared across processes, deterministic hard negatives): losses, ITM outputs and the averaged gradients.
* ``pool``: sampled hard negatives when every process's valid negatives lie in the other process's rows, with and
  without gathering.
* ``trainer``: one SGD step of ``DistillationTrainer`` (pre-training) on 2 + 2 rows: logged loss, updated weights.
"""

import sys

import torch
from accelerate import PartialState
from distillation_helpers import (
    argmax_hard_negatives,
    contrastive_batch,
    contrastive_config,
    one_distillation_step,
    share,
    tiny_batch,
)
from torch.nn.parallel import DistributedDataParallel

from efficientvlm.models.modeling_efficientvlm import EfficientVLMContrastiveMixin, EfficientVLMForPreTraining

OUTPUT_FIELDS = ("itc_loss", "itm_loss", "mlm_loss", "logits", "logits_per_image", "logits_per_text",
                 "itm_negative_text_index", "itm_negative_image_index", "itm_attention_mask")


def head_step(sizes: tuple[int, ...], rank: int, world: int) -> dict:
    """One forward/backward of the DDP-wrapped head on this process's share; per-process ITM and MLM means are
    weighted by the share's size so that DDP's average is the whole batch's mean (the ITC loss already is)."""
    torch.manual_seed(0)
    model = EfficientVLMForPreTraining(contrastive_config())
    ddp = DistributedDataParallel(model)
    out = ddp(**share(contrastive_batch(sizes), sizes, rank))
    weight = sizes[rank] * world / sum(sizes)
    (out.itc_loss + (out.itm_loss + out.mlm_loss) * weight).backward()
    result = {field: out[field].detach() for field in OUTPUT_FIELDS}
    result["grads"] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return result


def sampled_pool(rank: int) -> dict:
    """Sampled negatives when each process's two rows show one image: only the other process has negatives."""
    torch.manual_seed(0)
    model = EfficientVLMForPreTraining(contrastive_config()).eval()
    batch = tiny_batch(EfficientVLMForPreTraining, batch=4, padded=False)
    batch["image_ids"] = torch.tensor([3, 3, 4, 4])
    local = share(batch, (2, 2), rank)
    torch.manual_seed(100 + rank)
    result = {"gathered": []}
    with torch.no_grad():
        for _ in range(5):
            out = model(**local)
            result["gathered"].append(torch.stack([out.itm_negative_text_index, out.itm_negative_image_index]))
        model.gather_across_processes = False
        out = model(**local)
        result["local"] = torch.stack([out.itm_negative_text_index, out.itm_negative_image_index])
        result["local_itc_loss"] = out.itc_loss
    return result


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    # deterministic negatives: the same ones as one process mining over the whole batch
    sampler = EfficientVLMContrastiveMixin.mine_hard_negatives
    EfficientVLMContrastiveMixin.mine_hard_negatives = staticmethod(argmax_hard_negatives)
    results = {"even": head_step((2, 2), rank, world), "uneven": head_step((3, 2), rank, world),
               "trainer": one_distillation_step(output_dir, per_device_batch=2)}
    EfficientVLMContrastiveMixin.mine_hard_negatives = staticmethod(sampler)
    results["pool"] = sampled_pool(rank)
    torch.save(results, f"{output_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
