"""Networks, losses and checkpoints: shapes, dtypes, gradients, bit-exact round trips, no pickles."""

from __future__ import annotations

import json

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.config import CPU, FULL, ModelConfig
from models.discriminator import Discriminator
from models.generator import Generator
from models.losses import (discriminator_adversarial, feature_matching, generator_adversarial, ms_ssim, ms_ssim_loss,
                           r1_penalty, weighted_l1)
from models.syncformer import StyleSyncFormer, velocity_loss, vertex_loss

torch.manual_seed(0)


def test_config_round_trips_through_json():
    for cfg in (CPU, FULL):
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_syncformer_shapes_style_and_start_from_template():
    m = StyleSyncFormer(CPU.syncformer)
    audio, ref = torch.randn(2, 40, m.token_dim), 0.01 * torch.randn(2, 30, 478, 3)
    assert m.token_dim == 384 * len(CPU.syncformer.audio_offsets)  # one Whisper frame per offset
    style = m.style(ref)
    assert style.shape == (2, CPU.syncformer.style_dim) and style.dtype == torch.float32
    out = m(audio, style)
    assert out.shape == (2, 40, 478, 3) and out.dtype == torch.float32
    assert torch.allclose(out, torch.zeros_like(out))  # zero-initialised head: the template itself
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[1, 30:] = True
    assert m(audio, style, pad).shape == (2, 40, 478, 3)


def test_syncformer_style_changes_the_output_and_losses_backpropagate():
    m = StyleSyncFormer(CPU.syncformer)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    audio, target = torch.randn(1, 20, m.token_dim), 0.05 * torch.randn(1, 20, 478, 3)
    lips = torch.tensor([13, 14, 61, 291])
    for _ in range(3):  # leave the zero init so that the style matters
        loss = vertex_loss(m(audio, m.style(target)), target, lips, 5.0) + velocity_loss(m(audio, m.style(target)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    a = m(audio, m.style(target))
    b = m(audio, m.style(-target))
    assert not torch.allclose(a, b)
    assert m.style_encoder.proj.weight.grad is not None


@pytest.mark.parametrize("cfg", [CPU, FULL], ids=["cpu", "full"])
def test_generator_and_discriminator_shapes(cfg):
    g, d = Generator(cfg.generator), Discriminator(cfg.discriminator)
    s = cfg.generator.size
    b = 2 if cfg is CPU else 1
    mesh, target, ref = torch.rand(b, 1, s, s), torch.rand(b, 3, s, s) * 2 - 1, torch.rand(b, 3, s, s) * 2 - 1
    with torch.no_grad():
        fake = g(mesh, target, ref)
        logit, feats = d(fake, return_features=True)
    assert fake.shape == (b, 3, s, s) and fake.dtype == torch.float32
    assert logit.shape == (b, 1) and len(feats) == g.log_size - 2
    assert g.encode_reference(ref).shape == (b, g.n_latent, cfg.generator.style_dim)


def test_both_generator_paths_learn_and_losses_are_sane():
    g, d = Generator(CPU.generator), Discriminator(CPU.discriminator)
    s = CPU.generator.size
    mesh, target, ref = torch.rand(2, 1, s, s), torch.rand(2, 3, s, s) * 2 - 1, torch.rand(2, 3, s, s) * 2 - 1
    real = (torch.rand(2, 3, s, s) * 2 - 1).requires_grad_(True)
    mouth = torch.zeros(2, 1, s, s)
    mouth[..., s // 2:, :] = 1
    fake = g(mesh, target, ref)
    fake_logit, fake_feats = d(fake, return_features=True)
    real_logit, real_feats = d(real, return_features=True)
    loss = (weighted_l1(fake, real, mouth) + ms_ssim_loss(fake, real) + generator_adversarial(fake_logit)
            + feature_matching(fake_feats, real_feats))
    loss.backward(retain_graph=True)
    assert g.guide_encoder.stem[0].weight.grad.abs().sum() > 0      # the noise (guidance) path
    assert g.reference_encoder.stem[0].weight.grad.abs().sum() > 0  # the style (reference) path
    assert r1_penalty(real_logit, real).item() >= 0
    assert discriminator_adversarial(real_logit, fake_logit).item() > 0
    x = torch.rand(1, 3, 64, 64)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert weighted_l1(x, x, torch.ones(1, 1, 64, 64)).item() == 0


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    m = StyleSyncFormer(CPU.syncformer)
    m.set_normalization(torch.randn(478 * 3), torch.rand(478 * 3) + 0.5)
    version = save_checkpoint(tmp_path / "ck", m.state_dict(), CPU.to_dict(), {"steps": 3})
    tensors, doc, v2 = load_checkpoint(tmp_path / "ck")
    assert v2 == version and doc["metadata"] == {"steps": 3}
    m2 = StyleSyncFormer(ModelConfig.from_dict(doc["config"]).syncformer)
    m2.load_state_dict(tensors)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert save_checkpoint(tmp_path / "again", m2.state_dict(), CPU.to_dict()) == version  # content-addressed


def test_pickles_and_tampered_weights_are_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"version": "x", "config": {}}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(folder)
    (folder / "model.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
    ok = tmp_path / "ok"
    save_checkpoint(ok, {"w": torch.ones(3)}, {"a": 1})
    doc = json.loads((ok / "config.json").read_text())
    doc["config"]["a"] = 2
    (ok / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(ok)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "absent")


def test_whisper_encoder_shapes_and_depth():
    """(B, 80, 3000) log-mel -> (B, 1500, dim) at 50 Hz; stopping after k blocks gives the residual
    stream there, and the full depth is the last block's stream through the final norm."""
    from models.whisper_encoder import WhisperEncoder

    torch.manual_seed(0)
    enc = WhisperEncoder(dim=64, heads=1, hidden=128, n_blocks=2).eval()
    mel = torch.randn(2, 80, 3000)
    with torch.no_grad():
        full, one, two = enc(mel), enc(mel, 1), enc(mel, 2)
    assert full.shape == one.shape == (2, 1500, 64) and full.dtype == torch.float32
    assert torch.allclose(full, enc.norm(two)) and not torch.allclose(one, two)


def test_opening_loss_asks_for_the_timing_and_the_amplitude():
    """1 - concordance of the inner-lip gap: zero for the real motion, high for a damped copy and for a
    mouth that moves at the wrong time, and it has a gradient towards the right amplitude."""
    import torch

    from models.syncformer import opening_loss

    t = torch.linspace(0, 12.0, 64)
    target = torch.zeros(1, 64, 20, 3)
    target[0, :, 13, 1] = 0.05 * torch.sin(t)
    target[0, :, 14, 1] = -0.05 * torch.sin(t)
    assert float(opening_loss(target, target, (13, 14))) < 1e-6
    damped = (0.5 * target).requires_grad_(True)
    loss = opening_loss(damped, target, (13, 14))
    assert 0.15 < float(loss.detach()) < 0.5
    loss.backward()
    assert float(damped.grad[0, :, 13, 1] @ torch.sin(t)) < 0          # descending opens the mouth further
    late = torch.roll(target, 8, dims=1)
    assert float(opening_loss(late, target, (13, 14))) > 0.5


@pytest.fixture
def one_thread():
    """A network this small runs far slower on two busy threads than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sync_expert_embeds_unit_vectors_and_learns_which_offset_is_in_sync(one_thread):
    from models.sync_expert import SyncExpert, SyncExpertConfig, contrastive_loss, offset_distances

    torch.manual_seed(0)
    c = SyncExpertConfig(hidden=16, embed_dim=8, audio_dim=6, audio_frames=5, dropout=0.0, mouth_dim=3, audio_project=0,
                         input_dropout=0.0)
    expert = SyncExpert(c)
    mouth, audio = expert(torch.randn(7, c.window, c.mouth_dim), torch.randn(7, c.audio_frames, c.audio_dim))
    assert mouth.shape == audio.shape == (7, 8)
    assert torch.allclose(mouth.norm(dim=-1), torch.ones(7)) and torch.allclose(audio.norm(dim=-1), torch.ones(7))
    # a signal seen by both sides, the mouth 3 frames after the sound: training on the in-sync pairs
    # makes the offset search find +3 and makes in-sync pairs nearer than any other
    signal = torch.randn(400)
    mouth_in = torch.stack([signal.roll(-k) for k in range(c.window)], -1)[:, :, None].expand(-1, -1, 3).clone()
    audio_in = torch.stack([signal.roll(-k) for k in range(c.audio_frames)], -1)[:, :, None].expand(-1, -1, 6).clone()
    opt = torch.optim.Adam(expert.parameters(), lr=3e-3)
    valid = torch.ones(4, 32, dtype=torch.bool)
    first = None
    for step in range(100):
        starts = torch.randint(0, 400 - 32, (4,))
        m = torch.stack([mouth_in[a:a + 32] for a in starts.tolist()])
        a = torch.stack([audio_in[a:a + 32] for a in starts.tolist()])
        b = expert.mouth(m.flatten(0, 1)).reshape(4, 32, -1), expert.audio(a.flatten(0, 1)).reshape(4, 32, -1)
        loss = contrastive_loss(*b, valid, c.temperature)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 1.0
    expert.eval()
    with torch.no_grad():
        early = audio_in.roll(-3, 0)   # frame t plays the sound of t + 3: the mouth comes 3 frames after the sound
        offsets, dist = offset_distances(expert.mouth(mouth_in), expert.audio(early), torch.ones(400, dtype=torch.bool), 8)
    assert int(offsets[torch.argmin(dist)]) == 3


def test_expert_sync_loss_reads_the_experts_measures_and_steers_syncformer_training(one_thread):
    """The frozen expert as a Style-SyncFormer loss: its mouth measures are the distances QA's expert
    reads (over the eye distance), only the drawn mouth gets gradients, and the term changes what
    training learns."""
    import numpy as np

    from models.sync_expert import ExpertSyncLoss, SyncExpert, SyncExpertConfig, shape_measures
    from models.train_syncformer import Sequence, SyncFormerTraining, train_syncformer

    torch.manual_seed(0)
    pairs, left, right = torch.tensor([[13, 14], [61, 291]]), torch.tensor([33, 133]), torch.tensor([362, 263])
    points = torch.randn(2, 6, 478, 3)
    p = points.numpy()[..., :2]
    eye = np.linalg.norm(p[..., [362, 263], :].mean(-2) - p[..., [33, 133], :].mean(-2), axis=-1)
    want = np.linalg.norm(p[..., [13, 61], :] - p[..., [14, 291], :], axis=-1) / eye[..., None]
    assert np.allclose(shape_measures(points, pairs, left, right).numpy(), want, rtol=1e-5)

    c = SyncExpertConfig(mouth_dim=2, audio_dim=4, audio_frames=5, hidden=8, embed_dim=8, audio_project=0)
    expert = SyncExpert(c)
    loss = ExpertSyncLoss(expert, pairs, left, right, 10.0).train()
    assert not loss.expert.training and not any(q.requires_grad for q in loss.expert.parameters())
    meshes = torch.randn(3, 20, 478, 3, requires_grad=True)
    with torch.no_grad():
        audio = expert.audio(torch.randn(3 * 20, 5, 4)).reshape(3, 20, -1)
    value = loss(meshes, audio, torch.ones(3, 20))
    value.backward()
    assert torch.isfinite(value)
    moved = set(torch.nonzero(meshes.grad.abs().sum((0, 1, 3))).flatten().tolist())
    assert moved <= {13, 14, 61, 291, 33, 133, 362, 263} and {13, 14} <= moved

    cfg = StyleSyncFormer(CPU.syncformer).cfg
    seqs = [Sequence(torch.randn(40, cfg.audio_dim * len(cfg.audio_offsets)), 0.01 * torch.randn(40, 478, 3),
                     torch.randn(40, 478, 3), sync_audio=expert.audio(torch.randn(40, 5, 4)).detach()) for _ in range(3)]
    trained = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        model = StyleSyncFormer(CPU.syncformer)
        train_syncformer(model, seqs, torch.arange(10), SyncFormerTraining(steps=3, batch=2, window=16, eval_every=3,
                                                                           sync_weight=weight), sync_loss=loss)
        trained[weight] = model.head.weight.detach().clone()
    assert not torch.equal(trained[0.0], trained[1.0])


def test_a_safetensors_header_whose_length_reads_like_a_pickle_opcode_loads(tmp_path):
    """safetensors opens with its header's length; one whose low byte is 0x80 (a pickle's first
    opcode) is still safetensors and loads, and a real pickle is still refused."""
    for n in range(300):
        folder = tmp_path / f"m{n}"
        version = save_checkpoint(folder, {"w" * (n + 1): torch.ones(3)}, {"a": 1})
        if (folder / "model.safetensors").read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no tensor name gave a header length ending in 0x80")
    tensors, _, loaded = load_checkpoint(folder)
    assert loaded == version and torch.equal(next(iter(tensors.values())), torch.ones(3))
