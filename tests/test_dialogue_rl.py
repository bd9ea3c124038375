"""The user simulator and reinforcement learning of the dialogue policy (nanonlp.dialogue.simulator,
nanonlp.dialogue.reinforce): an oracle policy reaches every goal, a random one fewer; goals respect
the slots' validation; the simulator is deterministic under a seed; a REINFORCE step matches a hand
computation and raises the expected return of a bandit; RL raises the return on a tiny form; the
command keeps the supervised policy and writes the fine-tuned one atomically."""

from __future__ import annotations

import json
import random
import re
import shutil
import textwrap

import pytest
import torch

from dialogue_runs import FIXTURES, trained_run
from nanonlp.dialogue.policy import PolicyConfig, PolicyNet
from nanonlp.dialogue.reinforce import (ActLevelAssistant, Episode, RLConfig, policy_gradient_step, reinforce,
                                        reinforce_run)
from nanonlp.dialogue.simulator import SimulatorConfig, UserAct, UserSimulator, run_text_episode, story_answers
from nanonlp.dialogue.spec import read_assistant
from nanonlp.dialogue.state import valid_value
from nanonlp.errors import NanoNLPError

# A tiny shop: two requests the policy serves (balance, opening hours), a two-slot form the rules run.
SHOP = {
    "assistant.yaml": """
        assistant: {name: tiny shop, language: en}
        handoff: {intents: [human]}
        slots:
          size:
            question: Which size?
            values: [small, large]
          code:
            question: What is the order code?
            pattern: "[0-9]{3}"
        forms:
          order_form: {intent: order, slots: [size, code], submit: utter_ordered}
        responses:
          utter_greet: Hello!
          utter_balance: Your balance is in the app.
          utter_hours: We open at nine.
          utter_ordered: Ordered a {size} one, code {code}.
          utter_welcome: You are welcome.
        stories:
          - {name: greet, steps: [{user: greet}, {action: utter_greet}]}
          - {name: balance, steps: [{user: balance}, {action: utter_balance}]}
          - {name: hours, steps: [{user: hours}, {action: utter_hours}]}
          - {name: thanks, steps: [{user: thanks}, {action: utter_welcome}]}
          - name: order
            steps:
              - {user: order}
              - {action: ask_size}
              - {user: inform, entities: {size: small}}
              - {action: ask_code}
              - {user: inform, entities: {code: "123"}}
              - {action: utter_ordered}
    """,
    "intents.yaml": """
        intents:
          greet: {examples: [hello, hi there, good morning]}
          thanks: {examples: [thanks, thank you, cheers]}
          human: {examples: [a person please, talk to a human]}
          balance: {examples: [what is my balance, how much money do I have, show my balance]}
          hours: {examples: [when do you open, opening hours, what time do you open]}
          order: {examples: [I want to order, "order a [small](size) one", "buy a [large](size) please", place an order]}
          inform: {examples: ["[small](size)", "[large](size) please", "the code is [123](code)", "[456](code)"]}
    """,
}


@pytest.fixture()
def shop(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    for name, text in SHOP.items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return read_assistant(folder)


def policy_for(spec, seed: int = 0) -> PolicyNet:
    torch.manual_seed(seed)
    config = PolicyConfig(intents=spec.classifier_intents, slots=list(spec.slots), forms=list(spec.forms), actions=spec.actions,
                          dropout=0.0)
    return PolicyNet(config).eval()


def run_users(spec, simulator, choose_for, seeds, config=None):
    """Episodes with a chooser that may look at the user (an oracle), one per seed."""
    config = config or RLConfig()
    env = ActLevelAssistant(spec, policy_for(spec))
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        user = simulator.start(simulator.sample_goal(rng), rng)
        out.append(env.episode(user, choose_for(user, env), config))
    return out


def oracle(answers):
    """The policy that knows what the user asked: the stories' answer to the user's last intent."""

    def choose_for(user, env):
        return lambda features: env.index[answers[user.last_act.intent]]

    return choose_for


def uniform(seed):
    rng = random.Random(seed)
    return lambda user, env: (lambda features: rng.randrange(len(env.policy.actions)))


NOISY = SimulatorConfig(max_turns=30, p_out_of_scope=0.1, p_faq=0.0, p_drop=0.15, p_wrong=0.15)


def test_simulator_reads_tasks_values_and_answers(shop):
    sim = UserSimulator(shop)
    assert sim.tasks == ["balance", "hours", "order"]  # greet/thanks are social, human hands off, inform carries entities
    assert story_answers(shop)["balance"] == "utter_balance"
    assert sim.values == {"size": ["small", "large"], "code": ["123", "456"]}
    assert (sim.answering_intent("size", "small"), sim.answering_intent("code", "456")) == ("inform", "inform")


def test_oracle_policy_reaches_every_goal_despite_noise(shop):
    sim = UserSimulator(shop, NOISY)
    episodes = run_users(shop, sim, oracle(story_answers(shop)), range(200))
    assert all(e.success for e in episodes)
    # the noise happened: some users needed more turns than their goal's acts
    assert max(e.turns for e in episodes) > 2 + 2 * 4


def test_oracle_on_the_shipped_style_fixtures_english_and_chinese():
    for name in ("tiny_en", "tiny_zh"):
        spec = read_assistant(FIXTURES / name)
        sim = UserSimulator(spec, SimulatorConfig(max_turns=30, p_faq=0.0))
        episodes = run_users(spec, sim, oracle(story_answers(spec)), range(100))
        assert all(e.success for e in episodes), name


def test_a_random_policy_succeeds_less_and_talks_longer(shop):
    sim = UserSimulator(shop, NOISY)
    good = run_users(shop, sim, oracle(story_answers(shop)), range(200))
    bad = run_users(shop, sim, uniform(0), range(200))
    rate = lambda eps: sum(e.success for e in eps) / len(eps)
    assert rate(bad) < rate(good) - 0.3
    # unserved requests are repeated, so the random policy's successful users needed more turns on the same goals
    same = [(g.turns, b.turns) for g, b in zip(good, bad) if b.success]
    assert sum(b for _, b in same) >= sum(g for g, _ in same)


def test_goals_respect_slot_validation_and_wrong_values_fail_it(shop):
    sim = UserSimulator(shop)
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        for task in sim.sample_goal(rng).tasks:
            for slot, value in task.slots.items():
                assert valid_value(shop.slots[slot], value)
                seen.add((slot, value))
            if task.form is None:
                assert task.action == story_answers(shop)[task.intent] and task.slots == {}
    assert seen == {("size", "small"), ("size", "large"), ("code", "123"), ("code", "456")}
    for slot, value in [("size", "small"), ("code", "123")]:
        for _ in range(20):
            wrong = sim.wrong_value(shop.slots[slot], value, rng)
            assert wrong is not None and not valid_value(shop.slots[slot], wrong)
    zh = read_assistant(FIXTURES / "tiny_zh")
    zh_sim = UserSimulator(zh)
    for _ in range(100):
        for task in zh_sim.sample_goal(rng).tasks:
            assert re.fullmatch(zh.slots["order_id"].pattern, task.slots["order_id"])


def test_a_wrong_value_is_rejected_then_asked_again(shop):
    sim = UserSimulator(shop, SimulatorConfig(max_tasks=1, max_turns=40, p_wrong=0.5, p_drop=0.0, p_out_of_scope=0.0, p_faq=0.0))
    env = ActLevelAssistant(shop, policy_for(shop))
    answers = story_answers(shop)
    wrong_answers = 0
    for seed in range(60):
        rng = random.Random(seed)
        user = sim.start(sim.sample_goal(rng), rng)
        acts = []
        take = user.next_act
        user.next_act = lambda: acts.append(take()) or acts[-1]
        episode = env.episode(user, lambda f: env.index[answers[user.last_act.intent]], RLConfig())
        assert episode.success
        for act, action in zip(acts, episode.actions):
            for slot, value in act.slots.items():
                if act.intent == "inform" and not valid_value(shop.slots[slot], value):
                    wrong_answers += 1
                    assert action == f"ask_{slot}"  # the rules ask the same slot again
    assert wrong_answers >= 10


def test_simulator_is_deterministic_under_a_seed(shop):
    sim = UserSimulator(shop, NOISY)

    def acts(seed):
        rng = random.Random(seed)
        user = sim.start(sim.sample_goal(rng), rng)
        out = []
        while (act := user.next_act()) is not None:
            out.append((act.intent, tuple(sorted(act.slots.items())), sim.text(act, rng)))
            user.observe("ask_size" if act.intent == "order" else "utter_ok", {})
        return out

    assert acts(7) == acts(7)
    assert len({tuple(acts(seed)) for seed in range(20)}) > 10


def test_text_renders_a_paraphrase_with_the_goal_values(shop):
    sim = UserSimulator(shop)
    rng = random.Random(0)
    # an example that says the value as it is, where there is one
    assert {sim.text(UserAct("order", {"size": "large"}), rng) for _ in range(20)} == {"buy a large please"}
    assert {sim.text(UserAct("order", {"size": "small"}), rng) for _ in range(20)} == {"order a small one"}
    # else any example carrying the entity types, the value put in; paraphrases vary
    assert {sim.text(UserAct("inform", {"code": "789"}), rng) for _ in range(30)} == {"the code is 789", "789"}
    # an answer whose value was dropped: an example with its entities left out, never an empty message
    assert {sim.text(UserAct("inform"), rng) for _ in range(40)} == {"please", "the code is"}
    assert {sim.text(UserAct("balance"), rng) for _ in range(40)} == {"what is my balance", "how much money do I have", "show my balance"}
    zh = UserSimulator(read_assistant(FIXTURES / "tiny_zh"))
    text = zh.text(UserAct("inform", {"order_id": "Z99999"}), rng)
    assert "Z99999" in text and " " not in text


def test_policy_gradient_step_matches_a_hand_computation():
    torch.manual_seed(0)
    net = PolicyNet(PolicyConfig(intents=["a"], actions=["x", "y"], history=0, hidden_size=4, dropout=0.0)).eval()
    x = net.features.encode("a", set(), None, [])
    episodes = [Episode(True, 1, [1.0], [(0, x, 1)], ["y"]), Episode(False, 1, [0.0], [(0, x, 0)], ["x"]),
                Episode(False, 1, [0.0], [(0, x, 0)], ["x"]), Episode(True, 1, [1.0], [(0, x, 1)], ["y"])]
    with torch.no_grad():
        p = torch.softmax(net(x.unsqueeze(0))[0][0], -1)
    # returns 1, 0, 0, 1: baseline 0.5, standard deviation 0.5773..., advantages +-0.8660...
    adv = 0.5 / (1 / 3) ** 0.5
    entropy = -(p * p.log()).sum()
    expected = -(adv * p[1].log() - adv * p[0].log() - adv * p[0].log() + adv * p[1].log()) / 4 - 0.1 * entropy
    stats = policy_gradient_step(net, torch.optim.SGD(net.parameters(), lr=0.0), episodes, entropy=0.1)
    assert stats["loss"] == pytest.approx(float(expected), abs=1e-6)
    assert stats["choices"] == 4 and stats["mean_return"] == pytest.approx(0.5)


def test_a_reinforce_step_raises_the_expected_return_of_a_bandit():
    torch.manual_seed(0)
    net = PolicyNet(PolicyConfig(intents=["a"], actions=["x", "y", "z"], history=0, hidden_size=8, dropout=0.0)).eval()
    x = net.features.encode("a", set(), None, [])
    reward = torch.tensor([0.0, 1.0, 0.2])

    def expected_return():
        with torch.no_grad():
            return float(torch.softmax(net(x.unsqueeze(0))[0][0], -1) @ reward)

    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    start = expected_return()
    history = [start]
    for _ in range(40):
        with torch.no_grad():
            probs = torch.softmax(net(x.unsqueeze(0))[0][0], -1)
        actions = torch.multinomial(probs, 32, replacement=True, generator=generator).tolist()
        policy_gradient_step(net, optimizer, [Episode(False, 1, [float(reward[a])], [(0, x, a)], []) for a in actions], entropy=0.0)
        history.append(expected_return())
    assert history[1] > start  # one step already helps
    assert history[-1] > 0.9 and start < 0.6


def test_reinforce_raises_the_return_on_a_tiny_form(shop):
    policy = policy_for(shop, seed=1)  # untrained: it answers requests at random
    config = RLConfig(episodes=600, batch_episodes=16, learning_rate=3e-3, eval_goals=100, eval_every=300, seed=0,
                      simulator=SimulatorConfig(p_faq=0.0))
    report = reinforce(shop, policy, config)
    before, after = report["before"], report["after"]
    assert after["return"] > before["return"] + 5
    assert after["success_rate"] > before["success_rate"] + 0.2
    assert [p["episodes"] for p in report["curve"]] == [0, 300, 600]
    again = reinforce(shop, policy_for(shop, seed=1), config)
    assert again["curve"] == report["curve"]  # seeded: the same learning curve


def test_simulator_rejects_bad_settings(shop):
    from nanonlp.errors import ConfigError

    with pytest.raises(ConfigError, match="p_wrong"):
        UserSimulator(shop, SimulatorConfig(p_wrong=1.5))
    with pytest.raises(ConfigError, match="episodes"):
        RLConfig(episodes=0).validate()


def test_text_conversations_through_the_trained_assistant(tmp_path):
    import nanonlp.dialogue as dialogue

    run = trained_run("tiny_en")
    bot = dialogue.load(run, sessions=tmp_path / "s.sqlite")
    sim = UserSimulator(bot.spec, SimulatorConfig(p_out_of_scope=0.0, p_faq=0.0, p_drop=0.0, p_wrong=0.0, p_upfront=0.0))
    results = []
    for seed in range(10):
        rng = random.Random(seed)
        results.append(run_text_episode(bot, sim.start(sim.sample_goal(rng), rng), rng))
    assert all(r["transcript"] for r in results)
    assert sum(r["success"] for r in results) >= 8
    for r in results:
        if r["success"]:
            assert r["transcript"][-1]["action"] in ("utter_card_blocked", "utter_welcome")


def test_assistant_rl_command_keeps_the_supervised_policy(tmp_path, capsys):
    from nanonlp.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run("tiny_en"), run)
    supervised = (run / "model.safetensors").read_bytes()
    main(["assistant-rl", str(run), "--episodes", "64", "--eval-goals", "30", "--seed", "3", "--quiet"])
    assert "held-out success" in capsys.readouterr().out
    assert (run / "policy_supervised.safetensors").read_bytes() == supervised
    first = (run / "model.safetensors").read_bytes()
    assert first != supervised
    report = json.loads((run / "rl.json").read_text())
    assert report["config"]["episodes"] == 64 and report["curve"][0]["episodes"] == 0 and report["curve"][-1]["episodes"] == 64
    assert (run / "rl_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(run.glob(".*.tmp"))
    # again with the same seed: it starts from the supervised policy, so the same weights come out
    main(["assistant-rl", str(run), "--episodes", "64", "--eval-goals", "30", "--seed", "3", "--quiet"])
    assert (run / "model.safetensors").read_bytes() == first
    assert (run / "policy_supervised.safetensors").read_bytes() == supervised
    import nanonlp.dialogue as dialogue

    assert dialogue.load(run, sessions=":memory:").respond("hello")["action"]  # the fine-tuned run still serves


def test_assistant_rl_on_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(NanoNLPError, match="not a trained assistant run"):
        reinforce_run(tmp_path)


def test_rl_leaves_the_rules_actions_to_the_rules_as_served(shop, tmp_path):
    import nanonlp.dialogue as dialogue
    from nanonlp.dialogue.reinforce import rule_actions_mask, sampling

    policy = policy_for(shop)
    env = ActLevelAssistant(shop, policy)
    owned = {a for a, m in zip(policy.actions, env.mask.tolist()) if m}
    assert owned == {"action_handoff", "ask_size", "ask_code", "utter_ordered"}
    sim = UserSimulator(shop, NOISY)
    choose = sampling(policy, torch.Generator().manual_seed(0), env.mask)
    chosen = set()
    for seed in range(100):
        rng = random.Random(seed)
        episode = env.episode(sim.start(sim.sample_goal(rng), rng), choose, RLConfig())
        chosen |= {policy.actions[a] for _, _, a in episode.choices}
    assert chosen and not chosen & owned
    bot = dialogue.load(trained_run("tiny_en"), sessions=tmp_path / "s.sqlite")
    assert torch.equal(rule_actions_mask(bot.spec, bot.policy.actions), bot._policy_mask.cpu())  # the same mask as served
