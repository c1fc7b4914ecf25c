"""Hugging Face Hub integration: model cards, publishing, and conversion of the official checkpoints.

```python
from efficientvlm.hub import push_to_hub, render_model_card, convert_official_checkpoint
```
"""

from .cards import (
    CARD_KINDS,
    CITATION_BIBTEX,
    merge_card_metadata,
    render_layered_pruning_report,
    render_model_card,
    render_pruning_section,
    template_path,
)
from .convert import (
    ConversionError,
    ConversionReport,
    ConversionResult,
    convert_official_checkpoint,
    convert_official_state_dict,
)
from .publish import (
    PushResult,
    RemoteCodeError,
    assemble_repo_folder,
    build_model_card,
    check_extra_files,
    push_to_hub,
    remote_code_files,
)

__all__ = [
    "CARD_KINDS",
    "CITATION_BIBTEX",
    "ConversionError",
    "ConversionReport",
    "ConversionResult",
    "PushResult",
    "RemoteCodeError",
    "assemble_repo_folder",
    "build_model_card",
    "check_extra_files",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "merge_card_metadata",
    "push_to_hub",
    "remote_code_files",
    "render_model_card",
    "render_layered_pruning_report",
    "render_pruning_section",
    "template_path",
]
