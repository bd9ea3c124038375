"""A trained translator (attention seq2seq or Transformer) with its BPE vocabularies: greedy and beam
search, n-best lists, attention weights, BLEU and chrF."""

from __future__ import annotations

from pathlib import Path

import torch

from nanonlp.data.batching import by_length, pad_batch
from nanonlp.data.tokenizers import BPETokenizer, load_tokenizer
from nanonlp.decode import beam_search, greedy_search
from nanonlp.errors import NanoNLPError
from nanonlp.metrics import bleu_chrf, bleu_tokenizer
from nanonlp.predict import as_batch, load_model, open_for_inference
from nanonlp.predict.service import Call, Endpoint, Param

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 of every vocabulary


class Vocabularies:
    """The source and target BPE tokenizers (the same object when the vocabulary is joint), with the
    special ids every translator uses: sources end with eos; targets start with bos and end with eos."""

    def __init__(self, source: BPETokenizer, target: BPETokenizer):
        self.source, self.target = source, target
        self.pad_id, self.bos_id, self.eos_id = (target.token_id(t) for t in SPECIAL_TOKENS)
        if (source.token_id("<pad>"), source.token_id("</s>")) != (self.pad_id, self.eos_id):
            raise NanoNLPError("the source and target vocabularies disagree on the <pad> and </s> ids.")

    @classmethod
    def train(cls, cfg, pairs: list) -> "Vocabularies":
        """Train BPE on the training pairs (cfg: the data section: joint_vocab, vocab_size)."""
        sources, targets = [p.source for p in pairs], [p.target for p in pairs]
        if cfg.joint_vocab:
            joint = BPETokenizer.train("\n".join(sources + targets), cfg.vocab_size, special_tokens=SPECIAL_TOKENS)
            return cls(joint, joint)
        return cls(BPETokenizer.train("\n".join(sources), cfg.vocab_size, special_tokens=SPECIAL_TOKENS),
                   BPETokenizer.train("\n".join(targets), cfg.vocab_size, special_tokens=SPECIAL_TOKENS))

    def save(self, run_dir: Path) -> None:
        self.source.save(run_dir / "source")
        self.target.save(run_dir / "target")

    @classmethod
    def load(cls, run_dir: Path) -> "Vocabularies":
        return cls(load_tokenizer(run_dir / "source"), load_tokenizer(run_dir / "target"))

    def encode_sources(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        """Source ids ending with eos; beyond max_tokens (a Transformer's position table) cut, eos kept."""
        out = [ids + [self.eos_id] for ids in self.source.encode_batch(texts)]
        if max_tokens is not None:
            out = [s if len(s) <= max_tokens else s[: max_tokens - 1] + [self.eos_id] for s in out]
        return out

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        return self.target.encode_batch(texts)

    def decode_target(self, ids: list[int]) -> str:
        return self.target.decode(ids).strip()

    @staticmethod
    def pieces(tokenizer: BPETokenizer, ids: list[int]) -> tuple[list[str], list[tuple[int, int]]]:
        """Readable labels for the tokens, and the token range [start, end) each label covers.

        A label is a token's text with a leading space shown as '▁'. Byte-level BPE may split one
        character (a Chinese character is three UTF-8 bytes) across tokens: those tokens share one
        label, the whole character, so no label is a fragment shown as U+FFFD."""
        import codecs

        labels, spans, start = [], [], 0
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text = ""
        for k, i in enumerate(ids):
            token = tokenizer.id_to_token(i)
            if token in SPECIAL_TOKENS:
                if k > start:  # bytes that never made a character before a special token
                    labels.append(text.replace(" ", "▁") or "\ufffd")
                    spans.append((start, k))
                labels.append(token)
                spans.append((k, k + 1))
                start, text = k + 1, ""
                utf8.reset()
                continue
            text += utf8.decode(tokenizer.token_bytes(i))
            if utf8.getstate()[0] == b"":  # no bytes of an unfinished character are pending
                labels.append(text.replace(" ", "▁") or "\ufffd")
                spans.append((start, k + 1))
                start, text = k + 1, ""
        if start < len(ids):
            labels.append(text.replace(" ", "▁") or "\ufffd")
            spans.append((start, len(ids)))
        return labels, spans


RNN_SOURCE_TOKENS = 1024  # an RNN encoder has no position table; a longer source is cut here, bounding a request


def translate_endpoint(translator) -> Endpoint:
    """POST /v1/translate: per text the translation, or the n best with their scores. The texts of requests that
    arrive together share one batched search per beam size (the server's batcher), which stops between steps
    when every request in it has given up."""

    def translate(items: list[tuple[str, int | None, int]], cancel=None) -> list[dict]:
        """Per text the `translation`, the `nbest` list (`text`, `score`, best first) and `truncated`."""
        found = translator.translate_requests(items, cancel)
        return [{"translation": hyps[0][0] if hyps else "", "nbest": [{"text": t, "score": s} for t, s in hyps]} for hyps in found]

    return Endpoint("translate", {"texts": Param(list[str], description="the texts, a batch"),
                                  "beam": Param(int | None, None, "the beam's width; 1 is greedy; none: the run's", label="beam",
                                                ge=1, le=32),
                                  "nbest": Param(int, 1, "translations per text, best first", ge=1, le=32)},
                    translate, runner="batch", items="texts", carry=("beam", "nbest"), cancellable=True,
                    admit=lambda request: translator.check_beam(request["beam"], request["nbest"]),
                    truncated=lambda texts: [translator.truncated(t) for t in texts],
                    title="Translate", placeholder=f"One {translator.languages[0]} sentence a line",
                    view={"kind": "text", "key": "translation"})


class Translator:
    """A trained translation model with its vocabularies: `translate`, `translate_nbest`, `attention`, `evaluate`."""

    task = "translate"

    def __init__(self, model, vocab: Vocabularies, config, device):
        self.model, self.vocab, self.config, self.device = model.eval(), vocab, config, torch.device(device)

    @property
    def languages(self) -> tuple[str, str]:
        """(source, target) language codes, as the run's data section names them."""
        return self.config.data.source_lang, self.config.data.target_lang

    @property
    def max_input_length(self) -> int | None:
        """Source tokens read (with the end token); a longer sentence is cut: a Transformer's position
        table, or RNN_SOURCE_TOKENS for a recurrent encoder."""
        return getattr(self.model.config, "max_positions", None) or RNN_SOURCE_TOKENS

    def truncated(self, text: str) -> bool:
        """Whether the translator reads only the start of `text` (max_input_length tokens, the end token included)."""
        limit = self.max_input_length
        return limit is not None and len(self.vocab.source.encode(text.strip())) + 1 > limit

    def describe(self) -> dict:
        return {"languages": list(self.languages)}

    def endpoints(self) -> list[Endpoint]:
        return [translate_endpoint(self)]

    def max_lengths(self, sources: list[list[int]]) -> torch.Tensor:
        """Per source, the most tokens its translation may have: ratio * source length + offset,
        within the model's position table (a Transformer)."""
        options = self.config.translate
        cap = getattr(self.model.config, "max_positions", None)
        limits = []
        for ids in sources:
            limit = max(1, int(options.max_length_ratio * (len(ids) - 1) + options.max_length_offset))
            limits.append(min(limit, cap - 1) if cap else limit)
        return torch.tensor(limits)

    def _source_ids(self, texts: list[str]) -> list[list[int]]:
        return self.vocab.encode_sources([t.strip() for t in texts], self.max_input_length)

    def translate_nbest(self, texts: str | list[str], beam_size: int | None = None, nbest: int = 1,
                        batch_size: int | None = None, alpha: float | None = None, cancel=None) -> list[list[tuple[str, float]]]:
        """For each text its `nbest` translations with their scores (log-probability divided by the
        length penalty), best first. Beam size 1 is greedy search. Setting `cancel` (a
        threading.Event) stops the search between steps (decode.Cancelled)."""
        texts, single = as_batch(texts)
        sources = self._source_ids(texts)
        blank = [not text.strip() for text in texts]  # a blank line translates to a blank line
        out = self.translate_ids(sources, beam_size, nbest, batch_size, alpha, skip=blank, cancel=cancel)
        return out[0] if single else out

    def check_beam(self, beam_size: int | None, nbest: int) -> int:
        """The beam a search uses (the run's translate.beam_size when None); an nbest it cannot give is an error."""
        beam_size = beam_size or self.config.translate.beam_size
        if nbest > beam_size:
            raise NanoNLPError(f"--nbest {nbest} is larger than the beam ({beam_size}); a beam of k keeps at most k translations.")
        return beam_size

    @torch.inference_mode()
    def translate_ids(self, sources: list[list[int]], beam_size: int | None = None, nbest: int = 1, batch_size: int | None = None,
                      alpha: float | None = None, skip: list[bool] | None = None, cancel=None) -> list[list[tuple[str, float]]]:
        """translate_nbest for source ids (each ending with the end token), as a run caches them."""
        beam_size = self.check_beam(beam_size, nbest)
        batch_size = batch_size or self.config.translate.batch_size
        alpha = self.config.translate.length_penalty if alpha is None else alpha
        skip = skip or [False] * len(sources)
        v = self.vocab

        def search(batch: list[list[int]]) -> list[list[tuple[str, float]]]:
            src = pad_batch(batch, v.pad_id).to(self.device)
            limits = self.max_lengths(batch)
            if beam_size == 1:
                results = [[h] for h in greedy_search(self.model, src, limits, v.bos_id, v.eos_id, v.pad_id, alpha, cancel)]
            else:
                results = beam_search(self.model, src, limits, beam_size, v.bos_id, v.eos_id, v.pad_id, alpha, nbest, cancel)
            return [[(v.decode_target(h.tokens), h.score) for h in hypotheses] for hypotheses in results]

        kept = [i for i in range(len(sources)) if not skip[i]]
        found = by_length([sources[i] for i in kept], [len(sources[i]) for i in kept], batch_size, search)
        out: list = [[("", 0.0)] for _ in sources]  # a skipped (blank) line translates to a blank line
        for i, hypotheses in zip(kept, found):
            out[i] = hypotheses
        return out

    def translate_requests(self, items: list[tuple[str, int | None, int]], cancel=None) -> list[list[tuple[str, float]]]:
        """translate_nbest for the texts of several requests run together (the server's batcher):
        items are (text, beam_size, nbest). Texts with the same beam share one batched search (a
        search has one beam); each keeps its own n best. A text's translations and scores are those
        translate_nbest gives it in a request of its own with the same beam."""
        out: list = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (_, beam_size, nbest) in enumerate(items):
            groups.setdefault(self.check_beam(beam_size, nbest), []).append(i)
        for beam_size, rows in groups.items():
            most = max(items[i][2] for i in rows)  # the n best are a prefix of the most asked for
            found = self.translate_nbest([items[i][0] for i in rows], beam_size, most, cancel=cancel)
            for i, hypotheses in zip(rows, found):
                out[i] = hypotheses[: items[i][2]]
        return out

    def translate(self, texts: str | list[str], beam_size: int | None = None, batch_size: int | None = None) -> str | list[str]:
        """The best translation of a text, or of each text of a list."""
        texts, single = as_batch(texts)
        out = [n[0][0] for n in self.translate_nbest(texts, beam_size, 1, batch_size)]
        return out[0] if single else out

    @torch.inference_mode()
    def attention(self, text: str, beam_size: int | None = None, layer: int = -1, alpha: float | None = None):
        """Source pieces, translation pieces (with </s>), and the attention (T, S) of each translation
        piece over the source pieces: the RNN's attention, or the Transformer's cross-attention of
        `layer` averaged over heads. A piece is a token, or the tokens that spell one character."""
        v = self.vocab
        if not text.strip():
            raise NanoNLPError("the sentence whose attention should be plotted is empty.")
        source = self._source_ids([text])[0]
        beam_size = beam_size or self.config.translate.beam_size
        src = torch.tensor([source], device=self.device)
        limits = self.max_lengths([source])
        alpha = self.config.translate.length_penalty if alpha is None else alpha
        # beam search (beam 1 is greedy) ends every translation with eos, forced at the length limit
        tokens = beam_search(self.model, src, limits, beam_size, v.bos_id, v.eos_id, v.pad_id, alpha)[0][0].tokens
        state = self.model.encode(src)
        rows = []
        for step, token in enumerate([v.bos_id] + tokens):  # feed the translation back, reading the attention
            _, state, weights = self.model.decode_step(torch.tensor([token], device=self.device), state, step, need_weights=True)
            layers = weights.size(1)
            if not -layers <= layer < layers:
                raise NanoNLPError(f"--layer {layer} is out of range: the model has {layers} attention layer(s).")
            rows.append(weights[0, layer].float().cpu())
        weights = torch.stack(rows)  # (T, S) over tokens
        source_labels, source_spans = Vocabularies.pieces(v.source, source)
        target_labels, target_spans = Vocabularies.pieces(v.target, tokens + [v.eos_id])
        # Tokens that spell one character become one cell: the attention on a source character is the
        # sum over its tokens (rows still sum to 1), a target character's row the mean of its tokens' rows.
        weights = torch.stack([weights[:, a:b].sum(1) for a, b in source_spans], dim=1)
        weights = torch.stack([weights[a:b].mean(0) for a, b in target_spans])
        return source_labels, target_labels, weights

    def evaluate(self, sources: list[str], references: list[str], beam_size: int | None = None,
                 source_ids: list[list[int]] | None = None, bleu_tokenize: str | None = None) -> tuple[dict, list[str]]:
        """sacreBLEU BLEU and chrF of the translations of `sources` against `references`, and the
        translations. `source_ids`, when given, are the sources' ids (a run's cached split).
        `bleu_tokenize` overrides the run's translate.bleu_tokenize ("auto": chosen from the target language)."""
        setting = bleu_tokenize or getattr(self.config.translate, "bleu_tokenize", "auto")
        tokenize = bleu_tokenizer(self.config.data.target_lang, setting)
        if len(sources) != len(references):
            raise NanoNLPError(f"{len(sources):,} source sentences but {len(references):,} references; they must pair up line by line.")
        if source_ids is None:
            hypotheses = self.translate(list(sources), beam_size)
        else:
            hypotheses = [n[0][0] for n in self.translate_ids(source_ids, beam_size, skip=[not s.strip() for s in sources])]
        return bleu_chrf(hypotheses, references, tokenize), hypotheses


def load(run_dir: str | Path, device: str = "auto") -> Translator:
    run, torch_device = open_for_inference(run_dir, device)
    return Translator(load_model(run, torch_device), Vocabularies.load(run.dir), run.config, torch_device)
