"""The sentence VAE and the ARAE (a text GAN) against a same-size GRU language model, on Tatoeba
English (a seeded held-out test set of 5,000 distinct sentences), and a Chinese VAE for samples.

    python bench/vae.py                       # everything: about 70 minutes on 2 cores
    python bench/vae.py --minutes 5 --reverse-minutes 1 --zh-minutes 2 --out /tmp/vae_quick

Each model trains for --minutes on one core, two trainings at a time (the language model beside the
VAE, then the ARAE beside the Chinese VAE and the reverse language models), so every model gets the
same compute. Figures printed:
- held-out NLL per sentence and perplexity (the VAE's importance-weighted with --iw-samples), the
  VAE's KL, mutual information and active units;
- for --samples sentences drawn from each model (and, as the reference, real training sentences):
  forward perplexity (the samples scored by the language model trained on real data), reverse
  perplexity (a language model trained on the samples for --reverse-minutes, on the same vocabulary,
  scored on the real test set), distinct-1/2 and the share of samples that copy a training sentence;
- ten prior samples and three interpolations in English and in Chinese.
Reruns reuse finished runs in --out (delete them to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import nanonlp

HERE = Path(__file__).resolve().parent
INTERPOLATIONS = {
    "en": [("i have to go home .", "she is reading a book ."), ("tom is very tired .", "we ate dinner together ."),
           ("where is the station ?", "i don't like this movie .")],
    "zh": [("我很累。", "她在看书。"), ("汤姆是老师。", "我们一起吃饭吧。"), ("车站在哪里？", "我不喜欢这部电影。")],
}


def processor() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train(name: str, config: str, out: Path, seconds: float, *overrides: str) -> subprocess.Popen | None:
    """Start `nanonlp train` on one core; None if the run already finished."""
    run = out / name
    if (run / "best.json").is_file() and (run / "loss.png").is_file():
        print(f"[{name}] reusing {run}", file=sys.stderr)
        return None
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "nanonlp", "train", config, "--overwrite", "--quiet", f"--train.out_dir={run}",
            f"--train.max_seconds={seconds}", *overrides]
    print(f"[{name}] {' '.join(args[2:])}", file=sys.stderr)
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(*processes) -> None:
    for p in processes:
        if p is not None and p.wait() != 0:
            raise SystemExit(f"a training run failed: {' '.join(p.args)}; see its log in --out")


def distinct(samples: list[list[str]], n: int) -> float:
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def write_sentences(path: Path, sentences: list[str]) -> None:
    path.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")


def reverse_lm(name: str, samples: list[str], out: Path, lm_run: Path, minutes: float) -> subprocess.Popen | None:
    """A language model trained on `samples` alone, on the real language model's vocabulary."""
    path = out / f"{name}_samples.txt"
    write_sentences(path, samples)
    return train(f"reverse_{name}", str(HERE.parent / "nanonlp/configs/tatoeba_en_rnn_lm.yaml"), out, minutes * 60,
                 f"--data.path={path}", f"--data.vocab_from={lm_run}", "--data.test_sentences=0", "--data.val_sentences=500",
                 "--train.eval_interval=500", f"--train.lr_decay_steps={int(minutes * 60 / 0.12)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_vae", help="where the runs go")
    parser.add_argument("--minutes", type=float, default=30, help="training budget of the LM, the VAE and the ARAE, each")
    parser.add_argument("--reverse-minutes", type=float, default=5, help="training budget of each reverse language model")
    parser.add_argument("--zh-minutes", type=float, default=10, help="training budget of the Chinese VAE")
    parser.add_argument("--samples", type=int, default=20000, help="sentences drawn from each model")
    parser.add_argument("--iw-samples", type=int, default=100, help="k of the VAE's importance-weighted NLL")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every model")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = HERE.parent / "nanonlp" / "configs"
    seconds = args.minutes * 60
    decay = lambda s: f"--train.lr_decay_steps={int(s / 0.3)}"  # noqa: E731  (about 0.3 s a step on one core)
    started = time.time()
    print(f"processor: {processor()}; torch {torch.__version__}; {os.cpu_count()} cores; one core a training, two at a time",
          file=sys.stderr)

    # Phase 1: the language model beside the VAE.
    wait(train("lm", str(configs / "tatoeba_en_rnn_lm.yaml"), out, seconds, decay(seconds)),
         train("vae", str(configs / "tatoeba_en_vae.yaml"), out, seconds, decay(seconds)))
    lm, vae = nanonlp.load(out / "lm"), nanonlp.load(out / "vae")
    real_train = [line for line in (out / "lm" / "data" / "train.txt").read_text(encoding="utf-8").splitlines()]
    real_test = [line for line in (out / "lm" / "data" / "test.txt").read_text(encoding="utf-8").splitlines()]
    samples = {"real": real_train[: args.samples]}
    for name, model in (("lm", lm), ("vae", vae)):
        samples[name] = model.sample(args.samples, temperature=args.temperature, seed=1)

    # Phase 2: the ARAE beside the Chinese VAE, then the reverse language models of the real data, the LM and the VAE.
    arae = train("arae", str(configs / "tatoeba_en_arae.yaml"), out, seconds, decay(seconds))
    zh = train("zh_vae", str(configs / "tatoeba_zh_vae.yaml"), out, args.zh_minutes * 60, decay(args.zh_minutes * 60))
    wait(zh)
    for name in ("real", "lm", "vae"):
        wait(reverse_lm(name, samples[name], out, out / "lm", args.reverse_minutes))
    wait(arae)
    samples["arae"] = nanonlp.load(out / "arae").sample(args.samples, temperature=args.temperature, seed=1)
    wait(reverse_lm("arae", samples["arae"], out, out / "lm", args.reverse_minutes))

    # Figures.
    test_figures = {"lm": lm.evaluate(iw_samples=1), "vae": vae.evaluate(iw_samples=args.iw_samples)}
    test_figures["arae"] = nanonlp.load(out / "arae").evaluate()
    rows = {}
    for name, sentences in samples.items():
        words = [lm.words(s) for s in sentences]
        forward = lm.evaluate([s for s in sentences if s.strip()])
        reverse = nanonlp.load(out / f"reverse_{name}").evaluate(real_test)
        rows[name] = {"forward_ppl": forward["ppl"], "reverse_ppl": reverse["ppl"], "distinct_1": distinct(words, 1),
                      "distinct_2": distinct(words, 2), "copy_share": sum(lm.copies(sentences)) / len(sentences),
                      "mean_words": sum(map(len, words)) / len(words)}
    results = {"processor": processor(), "torch": torch.__version__, "minutes": args.minutes, "test": test_figures,
               "samples": rows, "wall_minutes": (time.time() - started) / 60}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")

    print(f"\nTatoeba English, {test_figures['lm']['sentences']:,} held-out sentences; processor {processor()}; "
          f"{args.minutes:g} min each on one core")
    print(f"{'model':6s} {'NLL/sent':>9s} {'ppl':>7s} {'KL':>6s} {'MI':>6s} {'AU':>4s}")
    for name in ("lm", "vae"):
        f = test_figures[name]
        print(f"{name:6s} {f['nll']:9.3f} {f['ppl']:7.2f} {f.get('kl', 0):6.2f} {f.get('mutual_information', 0):6.2f} "
              f"{f.get('active_units', 0):4d}" if name == "vae" else f"{name:6s} {f['nll']:9.3f} {f['ppl']:7.2f}")
    print(f"arae reconstruction {test_figures['arae']['reconstruction']:.3f} nats per sentence")
    gap = 100 * (test_figures["vae"]["nll"] / test_figures["lm"]["nll"] - 1)
    print(f"VAE NLL (k={args.iw_samples}) is {gap:+.2f}% against the language model's")
    print(f"\n{'samples':8s} {'fwd ppl':>8s} {'rev ppl':>8s} {'dist-1':>7s} {'dist-2':>7s} {'copies':>7s} {'words':>6s}")
    for name, r in rows.items():
        print(f"{name:8s} {r['forward_ppl']:8.2f} {r['reverse_ppl']:8.2f} {r['distinct_1']:7.3f} {r['distinct_2']:7.3f} "
              f"{100 * r['copy_share']:6.1f}% {r['mean_words']:6.2f}")

    for language, run in (("en", out / "vae"), ("zh", out / "zh_vae")):
        model = nanonlp.load(run)
        print(f"\n{language}: ten prior samples (temperature {args.temperature:g}), nearest training sentence beside each")
        for text in model.sample(10, temperature=args.temperature, seed=7):
            near = model.nearest(text, 1)
            print(f"  {text}    [{near[0][1]:.2f}: {near[0][0]}]" if near else f"  {text}")
        for first, second in INTERPOLATIONS[language]:
            print(f"{language}: interpolation")
            for i, text in enumerate(model.interpolate(first, second, 6)):
                print(f"  {i / 5:.1f}  {text}")
        zh_test = model.evaluate(iw_samples=20) if language == "zh" else None
        if zh_test:
            print(f"zh test: NLL {zh_test['nll']:.3f} (k=20), ppl {zh_test['ppl']:.2f}, KL {zh_test['kl']:.2f}, "
                  f"active units {zh_test['active_units']}")
    print(f"\nwall time {(time.time() - started) / 60:.1f} minutes", file=sys.stderr)


if __name__ == "__main__":
    main()
