import pytest
import torch
from diffusers import SD3Transformer2DModel

from models.saving import write_transformer

TINY = {
    "sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 1, "attention_head_dim": 8,
    "num_attention_heads": 2, "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 8,
    "out_channels": 4, "pos_embed_max_size": 8,
}  # fmt: skip


def test_written_folder_loads_with_from_pretrained_and_equals_the_state_dict(tmp_path):
    model = SD3Transformer2DModel(**TINY)
    state = {name: tensor + 1.0 for name, tensor in model.state_dict().items()}  # not the module's own weights
    write_transformer(model, state, tmp_path / "transformer")
    loaded = SD3Transformer2DModel.from_pretrained(tmp_path / "transformer").state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)


def test_a_partitioned_state_dict_is_refused_and_nothing_is_written(tmp_path):
    """What ZeRO-3 gives without gathering: 0-element tensors."""
    model = SD3Transformer2DModel(**TINY)
    state = {name: torch.empty(0) for name in model.state_dict()}
    with pytest.raises(RuntimeError, match="stage3_gather_16bit_weights_on_model_save"):
        write_transformer(model, state, tmp_path / "transformer")
    missing = dict(list(model.state_dict().items())[1:])
    with pytest.raises(RuntimeError, match="1 are missing"):
        write_transformer(model, missing, tmp_path / "transformer")
    assert list(tmp_path.iterdir()) == []
