"""Reinforcement learning of the assistant's dialogue policy against the user simulator, on the
shipped English bank example: success rate and mean turns before and after, on held-out simulated
goals, and the learning curve (PNG).

    python bench/assistant_rl.py                                   # train bank_en (small budget), then RL
    python bench/assistant_rl.py --run runs/bank_en --episodes 3000 --seed 0
    python bench/assistant_rl.py --folder path/to/assistant --text-goals 200

Steps: (1) train the assistant with `nanonlp.dialogue.train_assistant` (small budget; skipped when
--run already holds a trained run); (2) score the supervised policy at the dialogue-act level on
--eval-goals held-out goals (seeds seed + 1,000,003 onward, never used in training) and end to end
through `Assistant.respond` on --text-goals goals rendered as text (understanding included);
(3) REINFORCE (`nanonlp.dialogue.reinforce.reinforce_run`, the rules in front of the policy as
served); (4) the same scores after. The act-level figures measure the policy; the text figures
the whole assistant, whose intent and slot errors the policy cannot undo.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nanonlp.dialogue as dialogue  # noqa: E402
from nanonlp.dialogue.reinforce import EVAL_SEED_OFFSET, REPORT, RLConfig, reinforce_run  # noqa: E402
from nanonlp.dialogue.simulator import UserSimulator, run_text_episode  # noqa: E402
from nanonlp.errors import NanoNLPError  # noqa: E402
from nanonlp.io import save_json  # noqa: E402

SMALL_BUDGET = {"intent_steps": 200, "tagger_steps": 200, "sentiment_steps": 100}
POLICY_STEPS = 100


def text_scores(run: Path, goals: int, seed: int) -> dict:
    bot = dialogue.load(run, sessions=":memory:")
    simulator = UserSimulator(bot.spec)
    results = []
    for i in range(goals):
        rng = random.Random(seed + i)
        results.append(run_text_episode(bot, simulator.start(simulator.sample_goal(rng), rng), rng))
    return {"success_rate": sum(r["success"] for r in results) / goals, "turns": sum(r["turns"] for r in results) / goals,
            "goals": goals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="assistant folder (default: the shipped bank_en example)")
    parser.add_argument("--run", default="runs/bench_assistant_rl", help="run directory (trained here unless it holds a run)")
    parser.add_argument("--retrain", action="store_true", help="train the run again even if it exists")
    parser.add_argument("--episodes", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-goals", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--text-goals", type=int, default=100, help="goals run end to end through Assistant.respond (0: none)")
    args = parser.parse_args()

    folder = Path(args.folder) if args.folder else dialogue.examples().get("bank_en")
    if folder is None or not folder.is_dir():
        raise SystemExit("no assistant folder: the shipped bank_en example is missing; pass --folder.")
    run = Path(args.run)
    started = time.perf_counter()
    if args.retrain or not (run / "model.safetensors").is_file():
        shutil.rmtree(run, ignore_errors=True)
        dialogue.train_assistant(folder, run, assistant=SMALL_BUDGET, max_steps=POLICY_STEPS)
        print(f"trained {folder.name} into {run} in {time.perf_counter() - started:.0f} s "
              f"(intent/tagger/sentiment steps {SMALL_BUDGET}, policy steps {POLICY_STEPS})")
    supervised = run / "policy_supervised.safetensors"
    if supervised.is_file():  # a run fine-tuned before: score the supervised policy first
        shutil.copyfile(supervised, run / "model.safetensors")
    text_seed = args.seed + EVAL_SEED_OFFSET
    text_before = text_scores(run, args.text_goals, text_seed) if args.text_goals else None

    started = time.perf_counter()
    config = RLConfig(episodes=args.episodes, seed=args.seed, eval_goals=args.eval_goals, eval_every=args.eval_every)
    try:
        report = reinforce_run(run, config, quiet=False)
    except NanoNLPError as err:
        raise SystemExit(str(err))
    seconds = time.perf_counter() - started
    text_after = text_scores(run, args.text_goals, text_seed) if args.text_goals else None

    b, a = report["before"], report["after"]
    print(f"\nassistant RL on {folder.name}: {args.episodes} episodes, seed {args.seed}, {seconds:.0f} s "
          f"(evaluations included)")
    print(f"{'':34} {'supervised':>11} {'after RL':>9}")
    print(f"{'act level: success rate (%)':34} {100 * b['success_rate']:11.1f} {100 * a['success_rate']:9.1f}   "
          f"({a['goals']} held-out goals)")
    print(f"{'act level: mean user turns':34} {b['turns']:11.2f} {a['turns']:9.2f}")
    print(f"{'act level: mean return':34} {b['return']:11.2f} {a['return']:9.2f}")
    if text_before:
        print(f"{'text, end to end: success rate (%)':34} {100 * text_before['success_rate']:11.1f} "
              f"{100 * text_after['success_rate']:9.1f}   ({args.text_goals} held-out goals)")
        print(f"{'text, end to end: mean user turns':34} {text_before['turns']:11.2f} {text_after['turns']:9.2f}")
    print(f"curve: {run / 'rl_curve.png'}; report: {run / REPORT}")
    extra = {"text_before": text_before, "text_after": text_after, "rl_seconds": seconds}
    save_json(run / "bench_assistant_rl.json", extra)


if __name__ == "__main__":
    main()
