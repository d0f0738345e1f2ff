"""The VQGAN reader against the official taming-transformers releases' formats.

The three ``model.yaml`` texts below are the configs served beside the official checkpoints
(vqgan_imagenet_f16_16384, vqgan_imagenet_f16_1024, vqgan_gumbel_f8_8192), verbatim.  The
expected parameter counts and shapes were counted from taming's own ``VQModel``/``GumbelVQ``
built from those configs.
"""
from __future__ import annotations

import pickletools
import zipfile

import pytest
import torch

from renderer.vqgan_clip.vqgan import (UnsafeCheckpointError, VQGAN, load_vqgan, model_weights, read_config,
                                       read_lightning_state_dict, tiny_config)
from tests.vqgan_helpers import GlobalRef, foreign_pickle_module, lightning_1_0_checkpoint

F16_16384 = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 16384
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 0
        disc_weight: 0.75
        disc_num_layers: 2
        codebook_weight: 1.0
"""

F16_1024 = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 1024
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
"""

GUMBEL_F8_8192 = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.GumbelVQ
  params:
    kl_weight: 1.0e-08
    embed_dim: 256
    n_embed: 8192
    monitor: val/rec_loss
    temperature_scheduler_config:
      target: taming.lr_scheduler.LambdaWarmUpCosineScheduler
      params:
        warm_up_steps: 0
        max_decay_steps: 1000001
        lr_start: 0.9
        lr_max: 0.9
        lr_min: 1.0e-06
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 32
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.DummyLoss
"""

# name: (yaml, factor, gumbel, number of tensors, number of parameters, shapes of a few tensors)
OFFICIAL = {
    "vqgan_imagenet_f16_16384": (F16_16384, 16, False, 343, 76_073_859, {
        "quantize.embedding.weight": (16384, 256), "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
        "decoder.up.4.attn.2.proj_out.weight": (512, 512, 1, 1), "encoder.conv_out.weight": (256, 512, 3, 3)}),
    "vqgan_imagenet_f16_1024": (F16_1024, 16, False, 343, 72_141_699, {
        "quantize.embedding.weight": (1024, 256), "decoder.conv_in.weight": (512, 256, 3, 3)}),
    "vqgan_gumbel_f8_8192": (GUMBEL_F8_8192, 8, True, 301, 68_995_971, {
        "quantize.embed.weight": (8192, 256), "quantize.proj.weight": (8192, 256, 1, 1),
        "quantize.proj.bias": (8192,), "encoder.down.3.attn.1.k.weight": (512, 512, 1, 1)}),
}
COMMON_SHAPES = {"quant_conv.weight": (256, 256, 1, 1), "post_quant_conv.weight": (256, 256, 1, 1),
                 "encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_builds_the_official_layout(tmp_path, name):
    text, factor, gumbel, n_tensors, n_params, shapes = OFFICIAL[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    cfg = read_config(path)
    assert (cfg.factor, cfg.gumbel, cfg.embed_dim) == (factor, gumbel, 256)
    with torch.device("meta"):  # real size, no memory, no forward
        model = VQGAN(cfg)
    sd = model.state_dict()
    assert len(sd) == n_tensors
    assert sum(v.numel() for v in sd.values()) == n_params
    for key, shape in {**COMMON_SHAPES, **shapes}.items():
        assert tuple(sd[key].shape) == shape, key
    assert ("quantize.embedding.weight" in sd) is not gumbel and ("quantize.proj.weight" in sd) is gumbel
    # an official state_dict also carries the loss (LPIPS + discriminator): dropped, the rest loads strictly
    full = dict(sd)
    if not gumbel:
        full["loss.discriminator.main.0.weight"] = torch.empty(64, 3, 4, 4, device="meta")
        full["loss.perceptual_loss.lin0.model.1.weight"] = torch.empty(1, 64, 1, 1, device="meta")
    kept = model_weights(full, name)
    assert set(kept) == set(sd)
    model.load_state_dict(kept, strict=True, assign=True)


def _globals_in(path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.mark.parametrize("gumbel", [False, True])
def test_lightning_1_0_checkpoint_with_its_real_globals_loads(tmp_path, gumbel):
    torch.manual_seed(3)
    original = VQGAN(tiny_config(gumbel)).eval()
    ckpt = tmp_path / "last.ckpt"
    torch.save(lightning_1_0_checkpoint(original), ckpt, pickle_module=foreign_pickle_module(), pickle_protocol=2)
    found = _globals_in(ckpt)
    assert {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "numpy.core.multiarray.scalar",
            "numpy.dtype", "_codecs.encode", "numpy.core.multiarray._reconstruct", "__builtin__.set",
            "__builtin__.dict", "collections.defaultdict", "typing.Any", "omegaconf.dictconfig.DictConfig",
            "pytorch_lightning.utilities.parsing.AttributeDict", "torch.torch_version.TorchVersion",
            "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
            "torch.LongStorage"} <= found
    sd = read_lightning_state_dict(ckpt)
    assert "loss.discriminator.main.1.num_batches_tracked" in sd
    loaded = load_vqgan(ckpt, tiny_config(gumbel))
    z = original.random_latent(32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), original.decode(z))


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("__builtin__", "getattr"), ("os", "system"),
                                         ("subprocess", "Popen"), ("torch", "load"), ("collections", "namedtuple"),
                                         ("copyreg", "_reconstructor"), ("torch.serialization", "load")])
def test_every_other_global_is_still_refused(tmp_path, module, name):
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "x": GlobalRef(module, name)("1")},
               ckpt, pickle_module=foreign_pickle_module(), pickle_protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
        read_lightning_state_dict(ckpt)


def test_codecs_encode_only_makes_latin1_bytes(tmp_path):
    ckpt = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "x": GlobalRef("_codecs", "encode")("abc", "rot13")}, ckpt,
               pickle_module=foreign_pickle_module(), pickle_protocol=2)
    with pytest.raises(ValueError, match="_codecs.encode"):
        read_lightning_state_dict(ckpt)


def test_legacy_non_zip_checkpoint_loads(tmp_path):
    torch.manual_seed(4)
    original = VQGAN(tiny_config()).eval()
    ckpt = tmp_path / "legacy.ckpt"
    torch.save(lightning_1_0_checkpoint(original), ckpt, pickle_module=foreign_pickle_module(), pickle_protocol=2,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(ckpt)
    loaded = load_vqgan(ckpt, tiny_config())
    assert torch.equal(loaded.codebook, original.codebook)


def test_checkpoint_written_by_pytorch_lightning_loads(tmp_path):
    """A real Trainer run (1 step) with ModelCheckpoint and an omegaconf config in hyper_parameters."""
    pl = pytest.importorskip("pytorch_lightning")
    omegaconf = pytest.importorskip("omegaconf")
    from renderer.vqgan_clip.vqgan import config_to_yaml
    import yaml

    class TinyVQModel(pl.LightningModule):
        def __init__(self, model_config):
            super().__init__()
            self.save_hyperparameters()
            vq = VQGAN(tiny_config())
            self.encoder, self.decoder, self.quantize = vq.encoder, vq.decoder, vq.quantize
            self.quant_conv, self.post_quant_conv = vq.quant_conv, vq.post_quant_conv
            self.loss = torch.nn.Module()
            self.loss.discriminator = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

        def training_step(self, batch, batch_idx):
            x = batch[0]
            q, qloss, _ = self.quantize(self.quant_conv(self.encoder(x)))
            rec = (self.decoder(self.post_quant_conv(q)) - x).abs().mean()
            loss = rec + qloss + 0 * self.loss.discriminator(x).mean()
            self.log("val/rec_loss", rec)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, betas=(0.5, 0.9))

    torch.manual_seed(5)
    conf = omegaconf.OmegaConf.create(yaml.safe_load(config_to_yaml(tiny_config())))
    module = TinyVQModel(conf.model)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(2, 3, 32, 32) * 2 - 1),
                                       batch_size=2)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/rec_loss", save_last=True)
    trainer = pl.Trainer(max_steps=1, callbacks=[saver], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, data)
    ckpt = tmp_path / "last.ckpt"
    assert {"typing.Any", "omegaconf.dictconfig.DictConfig"} <= _globals_in(ckpt)
    loaded = load_vqgan(ckpt, tiny_config())
    reference = VQGAN(tiny_config()).eval()
    reference.load_state_dict(model_weights(module.state_dict(), "trained"), strict=True)
    z = reference.random_latent(32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), reference.decode(z))
