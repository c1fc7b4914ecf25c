"""Hugging Face Hub integration: model cards, publishing, and conversion of the official checkpoints.

```python
from efficientvlm.hub import push_to_hub, render_model_card, convert_official_checkpoint
```
"""

from .cards import (
    CARD_KINDS,
    CITATION_BIBTEX,
    merge_card_metadata,
    render_model_card,
    render_pruning_section,
    template_path,
)

__all__ = [
    "CARD_KINDS",
    "CITATION_BIBTEX",
    "merge_card_metadata",
    "render_model_card",
    "render_pruning_section",
    "template_path",
]
