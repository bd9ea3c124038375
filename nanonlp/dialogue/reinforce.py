"""Learning the dialogue policy from reward: REINFORCE (Williams, 1992) with a baseline and an
entropy bonus, against the agenda-based user simulator (nanonlp.dialogue.simulator).

    nanonlp assistant-rl runs/bank --episodes 3000 --seed 0
    from nanonlp.dialogue.reinforce import RLConfig, reinforce_run
    report = reinforce_run("runs/bank", RLConfig(episodes=3000, seed=0))

What RL controls. Each simulated turn goes exactly as a served turn does (`Assistant._turn`): the
user's act updates the state (`state.update`: slots, the form its intent starts), the readable rules
(`Rules.decide`: handoff, a form's questions and submit, out-of-scope and FAQ) decide where they
apply, and only where they return None does the learned `PolicyNet` choose, among the actions the
rules do not own (never handoff, a form's questions or submit: `Assistant.choose` masks them the
same way). RL samples those choices from the masked softmax(logits) and is rewarded for them; the rules' actions are part of the
environment. At act level the understanding is the act itself (intent and entities as the user
meant them) and an FAQ question is answered (score 1.0); sentiment is neutral.

Reward: `success_reward` when every task of the goal is served (a form submitted with the goal's
values), minus `turn_cost` per user turn. The return of a choice is the reward from its turn to the
end (no discount: an episode is at most `max_turns` long); the baseline is the mean return of the
batch's choices, and the advantages are divided by their standard deviation.

The run keeps the supervised policy: before the first fine-tune RUN/model.safetensors is copied to
RUN/policy_supervised.safetensors, and every fine-tune starts from that copy, so running RL again
with the same seed gives the same policy. The fine-tuned weights go to RUN/model.safetensors (which
`nanonlp.dialogue.load` serves), the figures and curve to RUN/rl.json and RUN/rl_curve.png, each
written atomically.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nanonlp.dialogue.policy import PolicyNet, Rules
from nanonlp.dialogue.simulator import SimulatorConfig, User, UserAct, UserSimulator
from nanonlp.dialogue.spec import ACTION_HANDOFF, FAQ_INTENT, AssistantSpec
from nanonlp.dialogue.state import DialogueState, missing_slots, record, take_action, update
from nanonlp.errors import ConfigError, NanoNLPError

SUPERVISED = "policy_supervised.safetensors"
REPORT, CURVE = "rl.json", "rl_curve.png"
EVAL_SEED_OFFSET = 1_000_003  # held-out goals: seeds no training episode uses


@dataclass
class RLConfig:
    episodes: int = 3000  # simulated conversations to learn from
    batch_episodes: int = 16  # conversations per policy-gradient step
    learning_rate: float = 1e-3  # Adam
    entropy: float = 0.01  # weight of the entropy bonus (keeps exploring)
    success_reward: float = 20.0  # reward when every task of the goal is served
    turn_cost: float = 1.0  # reward lost per user turn
    seed: int = 0  # training goals, users and sampling
    eval_goals: int = 500  # held-out goals for the before/after figures
    eval_every: int = 500  # episodes between points of the learning curve
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)

    def validate(self) -> None:
        if self.episodes < 1 or self.batch_episodes < 1 or self.eval_goals < 1 or self.eval_every < 1:
            raise ConfigError("episodes, batch_episodes, eval_goals and eval_every must each be at least 1.")
        if self.learning_rate <= 0 or self.entropy < 0 or self.turn_cost < 0:
            raise ConfigError("learning_rate must be positive, entropy and turn_cost 0 or more.")
        self.simulator.validate()


@dataclass
class Episode:
    success: bool
    turns: int
    rewards: list  # per user turn
    choices: list  # (turn index, features (F,), action index) of the policy's own choices
    actions: list  # every action taken, rules' included

    @property
    def total(self) -> float:
        return float(sum(self.rewards))


def rule_actions_mask(spec: AssistantSpec, actions: list[str]) -> torch.Tensor:
    """(A,) True for the actions only the rules take (handoff, a form's questions and submit): as
    served (`Assistant.choose`), the learned policy never picks them, in RL neither."""
    owned = {ACTION_HANDOFF} | {f"ask_{slot}" for form in spec.forms.values() for slot in form.slots} | {
        form.submit for form in spec.forms.values()}
    return torch.tensor([action in owned for action in actions])


class ActLevelAssistant:
    """The assistant's turn without the understanding models: a user act in, an action out."""

    def __init__(self, spec: AssistantSpec, policy: PolicyNet):
        self.spec, self.policy, self.rules = spec, policy, Rules(spec)
        self.index = {name: i for i, name in enumerate(policy.actions)}
        self.mask = rule_actions_mask(spec, policy.actions)

    def turn(self, state: DialogueState, act: UserAct, choose) -> tuple[str, tuple | None]:
        """Apply one act; `choose(features) -> action index` picks where the rules leave it to the
        policy. Returns (action, (features, action index) when the policy chose, else None)."""
        understood = {"intent": act.intent, "entities": act.entities(self.spec), "sentiment": {"negative": 0.0}}
        text = " ".join(act.slots.values())  # lets a requested slot be read from the answer, as served
        update(state, self.spec, understood, text)
        faq_score = 1.0 if act.intent == FAQ_INTENT and self.spec.faq else 0.0
        decided = self.rules.decide(state, act.intent, faq_score, missing_slots(state, self.spec))
        chosen = None
        if decided is not None:
            action = decided[0]
        else:
            features = self.policy.features.encode(act.intent, state.slots, state.active_form, state.actions)
            index = choose(features)
            action, chosen = self.policy.actions[index], (features, index)
        take_action(state, self.spec, action)
        record(state, self.spec, "", action, act.intent, action)
        return action, chosen

    def episode(self, user: User, choose, config: RLConfig) -> Episode:
        state = DialogueState.new("simulated")
        rewards, choices, actions = [], [], []
        while True:
            act = user.next_act()
            if act is None:
                break
            action, chosen = self.turn(state, act, choose)
            if chosen is not None:
                choices.append((len(rewards), *chosen))
            actions.append(action)
            # slots the user would see, at the moment of the action (a submit reads them before any reset)
            user.observe(action, dict(state.slots))
            rewards.append(-config.turn_cost)
        if rewards and user.success:
            rewards[-1] += config.success_reward
        return Episode(user.success, user.turns, rewards, choices, actions)


def _masked(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return logits if mask is None else logits.masked_fill(mask, float("-inf"))


def greedy(policy: PolicyNet, mask: torch.Tensor | None = None):
    """The served choice: the most probable action the rules do not own."""

    @torch.no_grad()
    def choose(features: torch.Tensor) -> int:
        logits, _ = policy(features.unsqueeze(0))
        return int(_masked(logits[0], mask).argmax())

    return choose


def sampling(policy: PolicyNet, generator: torch.Generator, mask: torch.Tensor | None = None):
    @torch.no_grad()
    def choose(features: torch.Tensor) -> int:
        logits, _ = policy(features.unsqueeze(0))
        return int(torch.multinomial(torch.softmax(_masked(logits[0].float(), mask), -1), 1, generator=generator))

    return choose


def evaluate(spec: AssistantSpec, policy: PolicyNet, simulator: UserSimulator, goals: int, seed: int, config: RLConfig) -> dict:
    """Success rate, mean turns and mean return of the greedy policy on `goals` simulated users,
    goal i drawn with seed `seed + i`."""
    was_training = policy.training
    policy.eval()
    env = ActLevelAssistant(spec, policy)
    choose = greedy(policy, env.mask)
    episodes = []
    for i in range(goals):
        rng = random.Random(seed + i)
        episodes.append(env.episode(simulator.start(simulator.sample_goal(rng), rng), choose, config))
    policy.train(was_training)
    n = len(episodes)
    return {"success_rate": sum(e.success for e in episodes) / n, "turns": sum(e.turns for e in episodes) / n,
            "return": sum(e.total for e in episodes) / n, "goals": n}


def policy_gradient_step(policy: PolicyNet, optimizer: torch.optim.Optimizer, episodes: list[Episode], entropy: float,
                         mask: torch.Tensor | None = None) -> dict:
    """One REINFORCE step over a batch of episodes: loss = -mean(advantage * log pi(a|s)) - entropy * mean(H),
    pi over the actions `mask` leaves to the policy. The baseline is the batch's mean return per choice;
    advantages are scaled to unit deviation."""
    features, actions, returns = [], [], []
    for episode in episodes:
        to_go = torch.tensor(episode.rewards, dtype=torch.float32).flip(0).cumsum(0).flip(0)  # return from each turn
        for turn, x, a in episode.choices:
            features.append(x)
            actions.append(a)
            returns.append(float(to_go[turn]))
    if not features:
        return {"choices": 0}
    returns_t = torch.tensor(returns)
    advantages = returns_t - returns_t.mean()
    if len(returns) > 1 and advantages.std() > 1e-6:
        advantages = advantages / advantages.std()
    logits, _ = policy(torch.stack(features))  # (N, A)
    log_probs = torch.log_softmax(_masked(logits.float(), mask), -1)
    chosen = log_probs.gather(1, torch.tensor(actions).unsqueeze(1)).squeeze(1)  # (N,)
    probs = log_probs.exp()
    bonus = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1).mean()  # masked actions: 0 * -inf counts 0
    loss = -(advantages * chosen).mean() - entropy * bonus
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"choices": len(features), "loss": float(loss.detach()), "entropy": float(bonus.detach()), "mean_return": float(returns_t.mean())}


def reinforce(spec: AssistantSpec, policy: PolicyNet, config: RLConfig, quiet: bool = True) -> dict:
    """Fine-tune `policy` in place against the simulator; returns {before, after, curve}. The policy
    runs without dropout (eval mode) so the probabilities it samples from are the ones it learns."""
    config.validate()
    torch.manual_seed(config.seed)
    simulator = UserSimulator(spec, config.simulator)
    eval_seed = config.seed + EVAL_SEED_OFFSET
    policy.eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    env = ActLevelAssistant(spec, policy)
    choose = sampling(policy, generator, env.mask)
    before = evaluate(spec, policy, simulator, config.eval_goals, eval_seed, config)
    curve = [{"episodes": 0, **before}]
    progress = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=config.episodes, unit="episode", file=sys.stderr)
    done, batch, next_point = 0, [], config.eval_every
    rng = random.Random(config.seed)
    while done < config.episodes:
        episode_rng = random.Random(rng.getrandbits(64))
        batch.append(env.episode(simulator.start(simulator.sample_goal(episode_rng), episode_rng), choose, config))
        done += 1
        if len(batch) == config.batch_episodes or done == config.episodes:
            stats = policy_gradient_step(policy, optimizer, batch, config.entropy, env.mask)
            if progress is not None:
                progress.update(len(batch))
                progress.set_postfix(success=f"{sum(e.success for e in batch) / len(batch):.2f}",
                                     entropy=f"{stats.get('entropy', 0):.2f}")
            batch = []
        if done >= next_point or done == config.episodes:
            point = evaluate(spec, policy, simulator, config.eval_goals, eval_seed, config)
            curve.append({"episodes": done, **point})
            next_point += config.eval_every
            if not quiet and progress is None:
                print(f"rl: {done} episodes, held-out success {point['success_rate']:.3f}, turns {point['turns']:.2f}",
                      file=sys.stderr)
    if progress is not None:
        progress.close()
    return {"before": before, "after": curve[-1], "curve": curve}


def plot_curve(curve: list[dict], out_path: Path, title: str = "") -> Path:
    """Held-out success rate and mean turns against the episodes learned from (PNG)."""
    from nanonlp.plots import _pyplot, _save_png

    plt = _pyplot()
    fig, left = plt.subplots(figsize=(7, 4), dpi=100)
    x = [p["episodes"] for p in curve]
    left.plot(x, [100 * p["success_rate"] for p in curve], "o-", color="tab:blue", markersize=3, label="success rate")
    left.set_xlabel("simulated conversations learned from")
    left.set_ylabel("held-out success rate (%)", color="tab:blue")
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(x, [p["turns"] for p in curve], "s--", color="tab:orange", markersize=3, label="turns")
    right.set_ylabel("mean user turns", color="tab:orange")
    if title:
        left.set_title(title)
    return _save_png(fig, out_path)


def reinforce_run(run_dir, config: RLConfig | None = None, quiet: bool = True) -> dict:
    """Fine-tune a trained assistant run's policy (see the module docstring); returns the report."""
    from nanonlp.checkpoint import WEIGHTS
    from nanonlp.dialogue.policy import load_policy, save_policy
    from nanonlp.dialogue.spec import read_assistant
    from nanonlp.io import atomic_write, load_weights, save_json

    config = config or RLConfig()
    config.validate()
    run_dir = Path(run_dir)
    if not (run_dir / "assistant").is_dir() or not (run_dir / WEIGHTS).is_file():
        raise NanoNLPError(f"'{run_dir}' is not a trained assistant run (no assistant/ folder or {WEIGHTS}); train one with "
                           "`nanonlp assistant train FOLDER --out RUN`.")
    spec = read_assistant(run_dir / "assistant")
    policy = load_policy(run_dir)
    supervised = run_dir / SUPERVISED
    if supervised.is_file():
        load_weights(policy, supervised)  # every fine-tune starts from the supervised policy
    else:
        atomic_write(supervised, lambda tmp: shutil.copyfile(run_dir / WEIGHTS, tmp))
    report = reinforce(spec, policy, config, quiet=quiet)
    save_policy(run_dir, policy)
    report["config"] = asdict(config)
    report["supervised_weights"] = SUPERVISED
    save_json(run_dir / REPORT, report)
    plot_curve(report["curve"], run_dir / CURVE, title=f"{spec.name}: REINFORCE against the user simulator")
    return report


# -- `nanonlp assistant-rl RUN` ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a trained assistant run (nanonlp assistant train FOLDER --out RUN)")
    defaults = RLConfig()
    parser.add_argument("--episodes", type=int, default=defaults.episodes, help="simulated conversations to learn from")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the training goals and sampling")
    parser.add_argument("--batch-episodes", type=int, default=defaults.batch_episodes, help="conversations per update")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--entropy", type=float, default=defaults.entropy, help="entropy bonus weight")
    parser.add_argument("--eval-goals", type=int, default=defaults.eval_goals, help="held-out simulated goals for the figures")
    parser.add_argument("--quiet", action="store_true", help="only errors")


def run_command(args: argparse.Namespace) -> None:
    config = RLConfig(episodes=args.episodes, seed=args.seed, batch_episodes=args.batch_episodes, learning_rate=args.learning_rate,
                      entropy=args.entropy, eval_goals=args.eval_goals, eval_every=max(args.episodes // 10, 1))
    report = reinforce_run(args.run_dir, config, quiet=args.quiet)
    b, a = report["before"], report["after"]
    print(f"held-out success {100 * b['success_rate']:.1f}% -> {100 * a['success_rate']:.1f}%, "
          f"turns {b['turns']:.2f} -> {a['turns']:.2f} ({a['goals']} simulated goals); "
          f"the policy is in {Path(args.run_dir) / 'model.safetensors'}, the supervised one in {SUPERVISED}")


def command():
    from nanonlp.tasks import Command

    return Command("assistant-rl", "fine-tune an assistant's policy by reinforcement learning against a simulated user",
                   add_arguments, run_command)


__all__ = ["RLConfig", "Episode", "ActLevelAssistant", "evaluate", "policy_gradient_step", "reinforce", "reinforce_run",
           "plot_curve"]
