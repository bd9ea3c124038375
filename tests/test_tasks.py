"""The task seam: a task defined here, outside the package, trains, evaluates, resumes and loads through
the CLI and nanonlp.load; predictors are inference-only and thread-safe; the shared loop's parts."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nanonlp
from nanonlp import tasks
from nanonlp.checkpoint import open_run
from nanonlp.cli import main
from nanonlp.config import TrainConfig, load_config
from nanonlp.data import cache
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import save_json
from nanonlp.predict import load_model
from nanonlp.tasks import Task, TrainingJob
from nanonlp.train import achieved_tflops, fit, optimizer_step, should_stop_early, train

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# a toy task, defined here and nowhere in the package: which letter a word has most of


@dataclass
class MajorityData:
    path: str = ""  # lines "LABEL WORD"

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("data.path is missing; give a file of 'LABEL WORD' lines.")


@dataclass
class CountsConfig:
    letters: str = field(default="", metadata={"derived": "the training words"})
    hidden: int = 8  # a small hidden layer, so a changed model setting can be tried on resume


class Counts(nn.Module):
    """Letter counts -> a hidden layer -> one logit per letter."""

    def __init__(self, config: CountsConfig):
        super().__init__()
        self.config = config
        self.hidden = nn.Linear(len(config.letters), config.hidden)
        self.out = nn.Linear(config.hidden, len(config.letters))

    def forward(self, counts, targets=None):
        logits = self.out(torch.relu(self.hidden(counts)))
        return logits, None if targets is None else F.cross_entropy(logits, targets)

    def flops_per_token(self) -> float:
        return 0.0


def featurize(words: list[str], letters: str) -> torch.Tensor:
    return torch.tensor([[float(word.count(c)) for c in letters] for word in words])


class MajorityPredictor:
    def __init__(self, model, letters: str):
        self.model, self.letters = model.eval(), letters

    @torch.inference_mode()
    def predict(self, words):
        single = isinstance(words, str)
        logits, _ = self.model(featurize([words] if single else words, self.letters))
        out = [self.letters[i] for i in logits.argmax(1).tolist()]
        return out[0] if single else out


class MajorityTask(Task):
    name = "majority_letter"
    sections = {"data": MajorityData}
    models = {"counts": (CountsConfig, Counts)}

    def prepare(self, cfg, ctx):
        rows = [line.split() for line in Path(cfg.data.path).read_text().splitlines() if line.strip()]
        letters = "".join(sorted({c for _, word in rows for c in word}))
        cfg.model = CountsConfig(letters=letters, hidden=cfg.model.hidden)
        save_json(ctx.run_dir / "data" / "rows.json", rows)
        cache.write_manifest(ctx.run_dir / "data", [Path(cfg.data.path)], {"path": cfg.data.path}, [])

    def job(self, cfg, ctx):
        cache.check(ctx.run_dir / "data", {"path": cfg.data.path}, [])
        rows = json.loads((ctx.run_dir / "data" / "rows.json").read_text())
        x = featurize([w for _, w in rows], cfg.model.letters)
        y = torch.tensor([cfg.model.letters.index(label) for label, _ in rows])
        model = self.build_model(cfg.model)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        steps_seen = []

        def batch():
            rows_ = torch.randint(len(y), (cfg.train.batch_size,), generator=generator)
            return x[rows_], y[rows_]

        def loss(model, b, step):
            steps_seen.append(step)
            _, total = model(*b)
            return {"loss": total, "scaled": total * 0.5}  # a named part, logged beside the total

        def evaluate(model):
            logits, _ = model(x)
            return {"val_accuracy": (logits.argmax(1) == y).float().mean().item()}

        self.steps_seen = steps_seen
        return TrainingJob(model=model, train_batch=batch, loss=loss, evaluate=evaluate, batch_tokens=lambda b: len(b[1]),
                           data_state=lambda: {"generator": generator.get_state()},
                           load_data_state=lambda s: generator.set_state(s["generator"]),
                           monitor="val_accuracy", monitor_mode="max")

    def evaluate(self, args):
        run = open_run(args.run_dir)
        predictor = self.load(args.run_dir, args.device)
        rows = json.loads((run.dir / "data" / "rows.json").read_text())
        correct = sum(predictor.predict(w) == label for label, w in rows)
        print(json.dumps({"accuracy": correct / len(rows)}))

    def load(self, run_dir, device="auto"):
        run = open_run(run_dir)
        return MajorityPredictor(load_model(run, torch.device("cpu")), run.config.model.letters)


@pytest.fixture
def majority_task(monkeypatch):
    tasks._discover()  # the built-in tasks first, so that they stay registered after this test
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))  # the toy task is registered for this test only
    task = tasks.register(MajorityTask())
    return task


def _majority_config(tmp_path) -> Path:
    data = tmp_path / "words.txt"
    data.write_text("a aab\nb abb\na aaa\nb bbb\nc ccb\nc cca\na aac\nb bbc\n")
    config = tmp_path / "majority.yaml"
    config.write_text(f"task: majority_letter\ndata: {{path: {data}}}\nmodel: {{type: counts}}\n"
                      f"train: {{out_dir: {tmp_path / 'run'}, max_steps: 150, eval_interval: 50, batch_size: 8, learning_rate: 0.05, "
                      "warmup_steps: 0, dtype: float32, device: cpu, log_interval: 10, weight_decay: 0.0}\n")
    return config


def test_a_task_defined_outside_the_package_trains_evaluates_resumes_and_loads(tmp_path, majority_task, capsys):
    config = _majority_config(tmp_path)
    main(["train", str(config), "--quiet", "--train.max_steps=100"])
    main(["train", str(config), "--quiet", "--resume"])  # to max_steps 150, from the step-100 checkpoint
    assert majority_task.steps_seen[0] == 100 and majority_task.steps_seen[-1] == 149  # the job reads the step
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 151, 10))
    logged = [r for r in records if "loss" in r]
    assert all(r["loss_scaled"] == pytest.approx(r["loss"] / 2, abs=1e-5) for r in logged)  # named parts logged apart
    main(["eval", str(tmp_path / "run"), "--json"])
    assert json.loads(capsys.readouterr().out) == {"accuracy": 1.0}
    predictor = nanonlp.load(tmp_path / "run")
    assert predictor.predict(["aaab", "bbba", "ccca"]) == ["a", "b", "c"]
    # the one resume rule holds for it too
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--quiet", "--resume", "--model.hidden=16", "--train.max_steps=200"])
    assert exit_info.value.code == 2
    assert "was trained with model.hidden=8 but the config now says 16" in capsys.readouterr().err
    # an option of another task is refused, naming its owner
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "run"), "--beam", "2"])
    assert "--beam is for translate runs" in capsys.readouterr().err


def test_unknown_task_names_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match="task must be one of assistant, classify, lm, sentence, tag, translate, got 'tagging'"):
        load_config(None, ["--task=tagging"])


# ---------------------------------------------------------------------------------------------------
# predictors: inference only, eval mode once, thread-safe


def test_loading_a_predictor_imports_no_training_code(tiny_config, tmp_path):
    cfg = tiny_config(train__max_steps=10)
    fit(cfg, quiet=True)
    script = (f"import sys, nanonlp\nlm = nanonlp.load({str(cfg.train.out_dir)!r}, device='cpu')\n"
              "text = lm.generate('To be', max_new_tokens=5, seed=1)\n"
              "assert not lm.model.training\n"
              "print(sorted(m for m in sys.modules if m in ('nanonlp.train', 'nanonlp.tasks.lm') or m.startswith('torch.distributed.fsdp')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = eval(out.stdout.strip().splitlines()[-1])
    assert "nanonlp.train" not in loaded and "nanonlp.tasks.lm" in loaded  # the registry, not the loop


def test_inference_imports_no_task_module_and_loading_a_run_imports_its_own_task_only(tmp_path):
    """predict/ stands below the tasks: importing every predict module imports no task; loading a classifier
    run, and serving it, imports nanonlp.tasks.classify and no other task."""
    train_file = tmp_path / "train.txt"
    train_file.write_text("pos a good film\nneg a bad film\n" * 4)
    fit(load_config(None, ["--task=classify", f"--data.path={train_file}", f"--data.dev_path={train_file}", "--model.type=bag_of_ngrams",
                           f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=4", "--train.eval_interval=4",
                           "--train.dtype=float32", "--classify.calibration_min_dev=2"]), quiet=True)
    script = ("import importlib, importlib.util, pkgutil, sys\nimport nanonlp, nanonlp.predict\n"
              "tasks = lambda: sorted(m for m in sys.modules if m.startswith('nanonlp.tasks'))\n"
              "for module in pkgutil.iter_modules(nanonlp.predict.__path__):\n"
              "    importlib.import_module('nanonlp.predict.' + module.name)\n"
              "print(tasks())\n"
              f"classifier = nanonlp.load({str(tmp_path / 'run')!r}, device='cpu')\n"
              "print(tasks())\n"
              "if importlib.util.find_spec('fastapi'):\n"
              "    from nanonlp.serve.app import create_app\n"
              "    create_app({'c': classifier})\n"
              "print(tasks())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[]", "['nanonlp.tasks', 'nanonlp.tasks.classify']", "['nanonlp.tasks', 'nanonlp.tasks.classify']"]


def test_language_model_from_eight_threads_answers_as_in_sequence(tiny_config):
    cfg = tiny_config(train__max_steps=20, model__dropout=0.1)  # dropout: eval mode must hold in every thread
    fit(cfg, quiet=True)
    lm = nanonlp.load(cfg.train.out_dir, device="cpu")
    prompts = ["To be", "Whether", "the ", "or not", "nobler", "that", "mind", "T"]
    sequential = [lm.generate(p, max_new_tokens=25, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda i: lm.generate(prompts[i], max_new_tokens=25, temperature=1.0, seed=i), range(8)))
    assert threaded == sequential
    assert lm.generate(prompts[:2], max_new_tokens=25, temperature=1.0, seed=0)[0] == sequential[0]  # a batch, item by item
    assert not lm.model.training


def test_stream_stops_before_a_stop_string(tiny_config):
    cfg = tiny_config(train__max_steps=60)
    fit(cfg, quiet=True)
    lm = nanonlp.load(cfg.train.out_dir, device="cpu")
    full = "".join(lm.stream("To", max_new_tokens=60, temperature=0))
    stop = full[10:13]
    cut = "".join(lm.stream("To", max_new_tokens=60, temperature=0, stop=[stop, "never there"]))
    assert cut == full[: full.index(stop)]
    pieces = list(lm.stream("To", max_new_tokens=60, temperature=0, stop=stop))
    assert "".join(pieces) == cut and all(stop not in p for p in pieces)
    assert lm.max_input_length == 16 and lm.vocab_size == lm.tokenizer.vocab_size


def test_until_stop_holds_back_a_partial_match():
    from nanonlp.predict.lm import until_stop

    assert "".join(until_stop(iter(["ab", "c<", "/s", "> more"]), ["</s>"])) == "abc"
    assert list(until_stop(iter(["ab", "c<", "x"]), ["</s>"])) == ["ab", "c", "<x"]  # "<" waits for the next piece
    assert "".join(until_stop(iter(["a", "b"]), [])) == "ab"


# ---------------------------------------------------------------------------------------------------
# the shared loop's parts


def test_early_stopping_stops_after_evaluations_without_improvement(tmp_path):
    model = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])  # lower is better: the best is the second evaluation
    job = TrainingJob(model=model, train_batch=lambda: torch.randn(4, 2), loss=lambda m, b, step: m(b).pow(2).mean(),
                      evaluate=lambda m: {"val_loss": next(scores)}, batch_tokens=lambda b: 4,
                      data_state=lambda: {}, load_data_state=lambda s: None)
    cfg = TrainConfig(max_steps=100, eval_interval=2, early_stopping=3, dtype="float32", warmup_steps=0)
    result = train(job, cfg, tmp_path, torch.device("cpu"), quiet=True)
    assert result.stopped_by == "early_stopping" and result.step == 10  # best at step 4, then 3 worse at 6, 8, 10
    assert result.best["step"] == 4 and json.loads((tmp_path / "best.json").read_text())["step"] == 4
    assert should_stop_early(cfg, 10, {"step": 4}) and not should_stop_early(cfg, 8, {"step": 4})
    assert not should_stop_early(TrainConfig(early_stopping=0), 10**6, {"step": 0})


def test_gradient_clipping_caps_the_global_norm():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    weight.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    optimizer_step(torch.nn.ParameterList([weight]), optimizer, grad_clip=1.0)
    assert torch.allclose(weight.detach(), -torch.tensor([0.6, 0.8, 0.0, 0.0]))  # the step has norm 1, same direction
    assert weight.grad is None  # cleared for the next step
    weight.grad = torch.tensor([0.3, 0.4, 0.0, 0.0])  # below the cap: untouched
    optimizer_step(torch.nn.ParameterList([weight]), optimizer, grad_clip=1.0)
    assert torch.allclose(weight.detach(), -torch.tensor([0.9, 1.2, 0.0, 0.0]))


def test_fp16_grad_scaler_path_skips_overflowing_steps_and_matches_unscaled_updates():
    torch.manual_seed(0)
    plain = torch.nn.Linear(3, 1)
    scaled = torch.nn.Linear(3, 1)
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3)
    job = TrainingJob(model=None, train_batch=None, loss=lambda m, b, step: m(b).pow(2).mean(), evaluate=None,
                      batch_tokens=None, data_state=None, load_data_state=None)
    from nanonlp.train import forward_backward

    optimizers = [torch.optim.SGD(plain.parameters(), lr=0.1), torch.optim.SGD(scaled.parameters(), lr=0.1)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    forward_backward(job, plain, [x], torch.device("cpu"), torch.float32)
    optimizer_step(plain, optimizers[0], 1.0)
    forward_backward(job, scaled, [x], torch.device("cpu"), torch.float32, scaler)
    optimizer_step(scaled, optimizers[1], 1.0, scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # unscaled before clipping and stepping
    before = [p.detach().clone() for p in scaled.parameters()]
    scale = scaler.get_scale()
    overflow = torch.full((8, 3), float("inf"))
    forward_backward(job, scaled, [overflow], torch.device("cpu"), torch.float32, scaler)
    optimizer_step(scaled, optimizers[1], 1.0, scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))  # the step was skipped
    assert scaler.get_scale() == scale / 2


def test_flops_per_token_and_mfu_formulas():
    from nanonlp.models import GPT, GPTConfig

    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True)
    model = GPT(config)
    # Parameters that multiply, counted by hand (C = 16, V = 50, L = 2): token embeddings V*C (tied with the
    # head), per block 12*C^2 weights + 13*C biases and norm gains, the final norm 2*C; not the positions.
    n = 50 * 16 + 2 * (12 * 16**2 + 13 * 16) + 2 * 16
    assert n == 7392
    assert model.flops_per_token() == 6 * n + 12 * 2 * 16 * 8  # PaLM: 6N + 12 * L * C * T
    # 1e9 FLOPs per token at 2,000 tokens/s over 2 devices: 1 TFLOP/s per device
    assert achieved_tflops(1e9, 2000, world_size=2) == pytest.approx(1.0)
    assert achieved_tflops(3e12, 1.0) == pytest.approx(3.0)


def test_dtype_auto_resolution(monkeypatch):
    from nanonlp import device as device_module
    from nanonlp.device import resolve_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16  # older GPUs: fp16 with the gradient scaler
    assert resolve_dtype("float32", cuda) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="float16 needs a CUDA GPU"):
        resolve_dtype("float16", cpu)


def test_a_loss_without_its_total_is_refused(tmp_path):
    job = TrainingJob(model=torch.nn.Linear(2, 1), train_batch=lambda: torch.randn(4, 2),
                      loss=lambda m, b, step: {"kl": m(b).mean()}, evaluate=lambda m: {"val_loss": 0.0},
                      batch_tokens=lambda b: 4, data_state=lambda: {}, load_data_state=lambda s: None)
    with pytest.raises(NanoNLPError, match="without the total under 'loss'"):
        train(job, TrainConfig(max_steps=2, dtype="float32"), tmp_path, torch.device("cpu"), quiet=True)


# ---------------------------------------------------------------------------------------------------
# prepared data


def test_lm_data_is_prepared_once_and_a_changed_corpus_is_refused_on_resume(tiny_config, corpus):
    cfg = tiny_config(train__max_steps=10)
    fit(cfg, quiet=True)
    manifest = json.loads((Path(cfg.train.out_dir) / "data" / "prepared.json").read_text())
    assert manifest["raw_files"] == [str(corpus.resolve())]
    corpus.write_text(corpus.read_text() + "More text.\n")
    with pytest.raises(NanoNLPError, match="changed since the run was prepared"):
        fit(tiny_config(train__max_steps=20), resume=True, quiet=True)
    corpus.unlink()  # the raw data gone: the run directory is all there is, and it suffices
    assert fit(tiny_config(train__max_steps=20), resume=True, quiet=True).step == 20


def test_tokenizer_files_are_found_under_a_folder_named_data(tmp_path):
    run = tmp_path / "data" / "runs" / "x"
    (run / "data").mkdir(parents=True)
    (run / "tokenizer.json").write_text("{}")
    (run / "data" / "tokenizer.json").write_text("{}")  # inside the run's own data/: not the run's tokenizer
    assert cache.tokenizer_files(run) == [run / "tokenizer.json"]


def test_a_changed_tokenizer_or_setting_is_named(tmp_path):
    raw, tokenizer = tmp_path / "raw.txt", tmp_path / "tokenizer.json"
    raw.write_text("text")
    tokenizer.write_text("{}")
    cache.write_manifest(tmp_path / "data", [raw], {"a": 1}, [tokenizer])
    cache.check(tmp_path / "data", {"a": 1}, [tokenizer])
    tokenizer.write_text('{"changed": true}')
    with pytest.raises(NanoNLPError, match=r"\(the tokenizer no longer matches\)"):
        cache.check(tmp_path / "data", {"a": 1}, [tokenizer])
    with pytest.raises(NanoNLPError, match=r"the data settings, the tokenizer no longer matches"):
        cache.check(tmp_path / "data", {"a": 2}, [tokenizer])
    raw.write_text("other text")
    with pytest.raises(NanoNLPError, match=f"the file {raw.resolve()}"):
        cache.check(tmp_path / "data", {"a": 1}, [tokenizer])


def test_a_two_argument_loss_is_refused_with_a_sentence(tmp_path):
    job = TrainingJob(model=torch.nn.Linear(2, 1), train_batch=lambda: torch.randn(4, 2), loss=lambda m, b: m(b).mean(),
                      evaluate=lambda m: {"val_loss": 0.0}, batch_tokens=lambda b: 4, data_state=lambda: {}, load_data_state=lambda s: None)
    with pytest.raises(NanoNLPError, match=r"must take \(model, batch, step\)"):
        train(job, TrainConfig(max_steps=2, dtype="float32"), tmp_path, torch.device("cpu"), quiet=True)


def test_version_answers_without_importing_torch_or_the_tasks():
    script = "import sys\nfrom nanonlp.cli import main\nmain(['--version'])\nprint('torch' in sys.modules, 'nanonlp.tasks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.splitlines() == [f"nanonlp {nanonlp.__version__}", "False False"], out.stderr[-2000:]
