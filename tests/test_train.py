import math
import pytest
import torch
import torch.nn.functional as F

from helpers.models import SmallResNet, count_parameters, new_head, set_trainable, tiny_gpt
from helpers.train import evaluate, make_schedule, train


def _images(n=256, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    for c in range(classes):  # a learnable signal: a bright square whose place is the class
        images[labels == c, :, c * 3:c * 3 + 3, 2:6] += 0.7
    return images, labels


def _run(**kw):
    torch.manual_seed(1)
    model = SmallResNet(4, width=4, stages=2, dropout=0.1)
    data = _images()
    history = train(model, data, _images(64, seed=1), epochs=2, batch_size=32, lr=3e-3,
                    progress=False, **kw)
    return model, history


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_training_learns_and_records_history():
    model, history = _run()
    frame = history.frame()
    assert list(frame.index) == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(frame.columns)
    assert history.examples_seen == 2 * 256 and history.wall_time > 0


def test_learns_a_simple_signal():
    torch.manual_seed(0)
    model = SmallResNet(4, width=8, stages=2)
    history = train(model, _images(512), _images(128, seed=1), epochs=4, batch_size=32, lr=1e-2,
                    progress=False)
    assert history.last("val_acc") > 0.9, history.frame()


def test_same_seed_same_weights():
    a, ha = _run()
    b, hb = _run()
    assert _same(a, b) and ha.rows[-1]["val_loss"] == hb.rows[-1]["val_loss"]


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    reference, ref_history = _run()

    class Interrupted(Exception):
        pass

    def stop_mid_epoch(step):
        if step == 11:  # epoch 2 of 2, mid-epoch, after the checkpoint at step 10
            raise Interrupted

    with pytest.raises(Interrupted):
        _run(checkpoint=tmp_path / "state.pt", checkpoint_every=5, on_step=stop_mid_epoch)
    resumed, history = _run(checkpoint=tmp_path / "state.pt", checkpoint_every=5)
    assert _same(reference, resumed)
    assert [r["val_acc"] for r in history.rows] == [r["val_acc"] for r in ref_history.rows]


def test_corrupt_training_checkpoint_is_not_used(tmp_path):
    path = tmp_path / "state.pt"
    _run(checkpoint=path, checkpoint_every=3)
    path.write_bytes(path.read_bytes()[:100])
    reference, _ = _run()
    with pytest.warns(UserWarning, match="ignoring unusable training checkpoint"):
        again, _ = _run(checkpoint=path)
    assert _same(reference, again)


def test_early_stopping_restores_best_weights():
    torch.manual_seed(0)
    model = SmallResNet(4, width=4, stages=2)
    noisy_labels = torch.randint(0, 4, (64,))  # nothing to learn: validation won't improve for long
    history = train(model, (_images(64)[0], noisy_labels), _images(64, seed=1), epochs=30,
                    batch_size=16, lr=1e-2, patience=2, progress=False)
    assert history.stopped_early and len(history.rows) < 30
    best = history.best("val_acc")
    assert evaluate(model, _images(64, seed=1))["acc"] == pytest.approx(best)


def test_penalty_and_epoch_hook_plug_in():
    seen = []
    anchor = {n: p.detach().clone() for n, p in SmallResNet(4, width=4, stages=2).named_parameters()}

    def pull_back(model):
        return sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters()) * 1e-3

    def probe(epoch, model, row):
        row["probe"] = epoch * 10
        seen.append(epoch)

    _, history = _run(penalties=[pull_back], on_epoch_end=[probe])
    assert seen == [1, 2] and history.frame()["probe"].tolist() == [10, 20]


def test_language_model_training_reduces_perplexity():
    torch.manual_seed(0)
    pattern = torch.arange(16).repeat(40)  # a perfectly predictable sequence
    blocks = torch.stack([pattern[i:i + 17] for i in range(0, 560, 8)])
    model = tiny_gpt(16, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    before = evaluate(model, blocks, task="lm")["ppl"]
    history = train(model, blocks, blocks[:8], task="lm", epochs=10, batch_size=16, lr=1e-2,
                    progress=False)
    assert history.last("val_ppl") < before / 4


def test_bad_arguments_fail_before_training():
    model = SmallResNet(4, width=4, stages=2)
    with pytest.raises(ValueError, match="'lr'=-1"):
        train(model, _images(8), lr=-1, progress=False)
    with pytest.raises(ValueError, match="train: task='regress' is not allowed"):
        train(model, _images(8), task="regress", progress=False)
    with pytest.raises(ValueError, match="make_schedule: schedule='step' is not allowed"):
        make_schedule(torch.optim.SGD(model.parameters(), lr=1), 10, "step")


def test_freezing_and_heads():
    model = SmallResNet(40, width=4, stages=2)
    total = count_parameters(model)
    set_trainable(model.backbone, False)
    assert count_parameters(model, trainable_only=True) == model.head.weight.numel() + 40
    new_head(model, 10)
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 10)
    assert count_parameters(model) < total


def test_token_level_labels_score_only_labelled_tokens():
    """Labels [N, T] (masked LM, tagging): IGNORE tokens add nothing to the loss, accuracy or count."""
    from helpers.train import IGNORE, batch_loss

    torch.manual_seed(0)
    tokens = torch.randint(0, 8, (64, 6))
    labels = torch.full_like(tokens, IGNORE)
    labels[:, ::3] = tokens[:, ::3]  # every third token is labelled: predict the token itself
    model = torch.nn.Sequential(torch.nn.Embedding(8, 16), torch.nn.Linear(16, 8))
    loss, correct, size = batch_loss(model, (tokens, labels), "classify")
    logits = model(tokens)[:, ::3].reshape(-1, 8)
    assert size == 64 * 2 and torch.allclose(loss, F.cross_entropy(logits, tokens[:, ::3].reshape(-1)))
    assert int(correct) == int((logits.argmax(-1) == tokens[:, ::3].reshape(-1)).sum())
    empty = torch.full_like(tokens, IGNORE)
    loss, correct, size = batch_loss(model, (tokens, empty), "classify")
    assert size == 0 and loss.item() == 0 and int(correct) == 0
    history = train(model, (tokens, labels), (tokens, labels), epochs=20, batch_size=16, lr=3e-2,
                    progress=False)
    assert history.examples_seen == 20 * 128 and history.last("val_acc") > 0.95


def test_augment_and_custom_loss_plug_in():
    seen = []

    def flip(inputs):
        seen.append(inputs.shape[0])
        return inputs.flip(-1)

    def weighted(model, batch, task):
        logits = model(batch[0])
        loss = torch.nn.functional.cross_entropy(logits, batch[1], weight=torch.tensor([1.0, 2.0, 1.0, 1.0]))
        return loss, (logits.argmax(-1) == batch[1]).sum(), len(batch[1])

    _, history = _run(augment=flip, loss_fn=weighted)
    assert sum(seen) == 2 * 256 and len(history.rows) == 2


def test_vision_augment_keeps_shape_and_range():
    from helpers.vision import augment
    images = torch.rand(5, 1, 28, 28)
    out = augment(images)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, images)


def test_tensorboard_logs_the_epoch_scalars_and_changes_no_number(tmp_path, monkeypatch):
    """The one test that writes TensorBoard event files: read them back."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain_model, plain = _run()
    logged_model, logged = _run(tensorboard=tmp_path / "tb")
    assert _same(plain_model, logged_model)  # logging changes no weight
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "throughput/examples_per_s"} <= tags
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [step for step, _ in loss] == [1, 2]
    assert [v for _, v in loss] == pytest.approx([row["train_loss"] for row in logged.rows], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("throughput/examples_per_s"))
    # $WORKBOOK_TENSORBOARD (python -m helpers.run --tensorboard): one numbered run per train() call
    monkeypatch.setenv("WORKBOOK_TENSORBOARD", str(tmp_path / "runs"))
    _run(desc="probe a/b")
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].endswith("-probe_a_b") and list((tmp_path / "runs" / runs[0]).iterdir())


def test_bf16_only_where_the_device_supports_it(monkeypatch):
    from helpers import train as tr

    assert tr.bf16_supported("cpu") and tr.use_bf16(True, torch.device("cpu"))
    assert tr.use_bf16(False, torch.device("cpu")) is False
    tr.bf16_supported.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.warns(UserWarning, match="not supported natively on cuda"):
        assert tr.use_bf16(True, torch.device("cuda")) is False  # e.g. a T4 or V100: fp32 instead
    tr.bf16_supported.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert tr.use_bf16(True, torch.device("cuda")) is True  # an A100/H100
    tr.bf16_supported.cache_clear()


def test_resume_state_includes_the_cuda_generator(monkeypatch):
    """On a CUDA device the saved state holds the GPU's generator too, and resuming restores it
    (checked with a stand-in for torch.cuda, as the tests run on CPUs)."""
    from helpers import train as tr

    cpu = tr.rng_state(torch.device("cpu"))
    assert cpu["cuda_rng"] is None and torch.equal(cpu["rng"], torch.get_rng_state())
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, 8], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update(state=state, device=device))
    state = tr.rng_state(torch.device("cuda:1"))
    assert state["cuda_rng"].tolist() == [7, 8]
    tr.set_rng_state(state, torch.device("cuda:1"))
    assert restored["state"].tolist() == [7, 8] and restored["device"] == torch.device("cuda:1")
    restored.clear()
    tr.set_rng_state(state, torch.device("cpu"))  # a CUDA state is not pushed onto a CPU run
    assert not restored


def test_bf16_attention_kernel_choice_computes_the_same_and_eval_leaves_training_intact():
    """On a CPU under bf16 the math attention kernel replaces the fused one (it is faster there);
    both compute the same loss, and so do the loss's fp32 argmax and the old per-token argmax."""
    import torch.nn.functional as F

    from helpers.models import tiny_gpt
    from helpers.train import _forward, attention_kernels, batch_loss, evaluate

    torch.manual_seed(0)
    model = tiny_gpt(50, n_positions=16, n_embd=32, n_layer=1, n_head=2, use_cache=False)
    blocks = torch.randint(0, 50, (8, 17))
    cpu = torch.device("cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _, _ = batch_loss(model, blocks, "lm")
        with attention_kernels(cpu, bf16=True):
            math_kernel, correct, size = batch_loss(model, blocks, "lm")
        logits = _forward(model, blocks[:, :-1])
    assert math_kernel.item() == pytest.approx(fused.item(), rel=2e-2)  # equal up to bf16 rounding
    assert int(correct) == int((logits.argmax(-1) == blocks[:, 1:]).sum()) and size == 8 * 16
    with torch.no_grad():  # fp32: the kernel choice is PyTorch's, and the loss is the plain one
        loss, _, _ = batch_loss(model, blocks, "lm")
        reference = F.cross_entropy(_forward(model, blocks[:, :-1]).reshape(-1, 50), blocks[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert type(attention_kernels(cpu, bf16=False)).__name__ == "nullcontext"

    # evaluate runs under inference_mode, between training epochs, without breaking training
    history = train(model, blocks, blocks[:2], task="lm", epochs=2, batch_size=4, bf16=True, progress=False)
    assert [r["epoch"] for r in history.rows] == [1, 2] and math.isfinite(history.last("val_loss"))
    assert math.isfinite(evaluate(model, blocks, task="lm", bf16=True)["loss"])


def test_for_inference_folds_batchnorm_without_changing_the_function():
    from helpers.models import for_inference

    model, _ = _run()  # trained: BatchNorm's running statistics are far from 0 and 1
    model.eval()
    folded = for_inference(model)
    assert folded is not model and model.training is False
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    images, labels = _images(64, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(folded.features(images), model.features(images), atol=1e-5, rtol=1e-4)
    # evaluate() scores the folded copy and leaves the model itself as it was (here: training mode)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored = evaluate(model, (images, labels))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.inference_mode():
        expected = (model(images).argmax(-1) == labels).float().mean().item()
    assert scored["acc"] == pytest.approx(expected)
    gpt = tiny_gpt(300, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    assert for_inference(gpt) is gpt  # only the small CNN is folded; anything else is scored as it is


def test_fused_adam_is_the_same_update():
    from helpers.train import fused_adam

    assert fused_adam("cpu") == {"fused": True}
    torch.manual_seed(0)
    a = SmallResNet(4, width=4, stages=2)
    b = SmallResNet(4, width=4, stages=2)
    b.load_state_dict(a.state_dict())
    opts = [torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1),
            torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, **fused_adam("cpu"))]
    images, labels = _images(32)
    for _ in range(3):
        for model, opt in zip((a, b), opts):
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_next_token_loss_matches_cross_entropy_in_value_and_gradient():
    from helpers.train import next_token_loss

    torch.manual_seed(0)
    logits = (torch.randn(64, 50) * 4).requires_grad_()
    targets = torch.randint(0, 50, (64,))
    ours, predicted = next_token_loss(logits, targets)
    (grad,) = torch.autograd.grad(ours * 3.0, logits)
    reference = F.cross_entropy(logits, targets)
    (expected,) = torch.autograd.grad(reference * 3.0, logits)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad, expected)
    assert torch.equal(predicted, logits.argmax(-1)) and not predicted.requires_grad
    with torch.inference_mode():  # evaluation calls it without autograd
        torch.testing.assert_close(next_token_loss(logits.detach(), targets)[0], reference.detach())


def test_next_token_loss_refuses_a_second_backward():
    """The backward scales its saved buffer in place: a retained graph must not silently give a
    wrong gradient the second time."""
    from helpers.train import next_token_loss

    logits = torch.randn(8, 5, requires_grad=True)
    loss, _ = next_token_loss(logits, torch.randint(0, 5, (8,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
