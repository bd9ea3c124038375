"""`POST /v1/chat`: a turn of a conversation with a mounted assistant run (nanonlp.dialogue).

    POST /v1/chat  {"message": "I lost my card"}                        -> a new session
    POST /v1/chat  {"session_id": "...", "message": "visa"}             -> the next turn of that session
    -> {session_id, reply, intent, confidence, entities, slots, sentiment, action, handoff,
        source: template|faq|generated|fallback, suggestions}, plus `transcript` when handoff is true

Sessions live in the assistant's session store (RUN/sessions.sqlite unless `nanonlp serve
--sessions` names a SQLite file or a SQLAlchemy URL), so a restarted server continues its
conversations. An unknown or expired `session_id` is not an error: the turn starts a new session
under a fresh id, and the client sees that the returned id differs from the one it sent (the page
says so). Ids are the store's to make, never the client's, so a client cannot choose or guess one.

A turn runs on the thread pool, off the event loop (the models and the store block); the assistant
serialises the turns of one session itself. The request model is strict: a message that is not a
string, is empty or is over the assistant's limit, an unknown key, or a malformed session id is a
422 naming the field.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time.
from typing import Any

ASSISTANT = "assistant"
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # what the stores hand out (URL-safe base64), with room to spare


def is_assistant(predictor: Any) -> bool:
    """Whether a loaded run is an assistant (nanonlp.dialogue.assistant.Assistant): what it offers, not its class,
    so app.py need not import the dialogue package."""
    return callable(getattr(predictor, "respond", None)) and callable(getattr(predictor, "transcript", None)) \
        and hasattr(predictor, "spec")


def max_message_chars() -> int:
    from nanonlp.dialogue.assistant import MAX_MESSAGE_CHARS

    return MAX_MESSAGE_CHARS


def describe(assistant) -> dict:
    """What GET /v1/models says of a mounted assistant."""
    spec = assistant.spec
    return {"assistant": spec.name, "language": spec.language, "intents": list(spec.intents),
            "forms": {name: list(form.slots) for name, form in spec.forms.items()}, "slots": list(spec.slots),
            "faq_answers": len(spec.faq), "suggestions": assistant.suggestions(), "generative": False, "max_message_chars": max_message_chars(),
            "session_expiry_minutes": spec.settings["session"]["expiry_minutes"]}


def router(pick, in_thread, check_key):
    """The APIRouter of /v1/chat. `pick(name, task)` finds the mounted run, `in_thread(mounted, fn, *args)` runs
    fn on the thread pool under the server's queue bound and time limit, `check_key` is the API-key dependency
    (all three from create_app, so the chat endpoint behaves as the others do)."""
    from fastapi import APIRouter, Depends
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    limit = max_message_chars()

    class ChatRequest(BaseModel):
        # strict: 123 or true is not silently read as the message "123" / "True"
        model_config = ConfigDict(extra="forbid", strict=True)
        model: str | None = Field(None, description="the assistant's mounted name; may be left out when one is mounted")
        session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN,
                                       description="the session to continue (from an earlier reply); none starts a new one")
        message: str = Field(..., min_length=1, max_length=limit, description=f"what the customer wrote (1 to {limit} characters)")

        @field_validator("message")
        @classmethod
        def not_blank(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("the message is only white space; send some text")
            return value

    api = APIRouter()

    @api.post("/v1/chat", dependencies=[Depends(check_key)])
    async def chat(body: ChatRequest) -> dict:
        m = pick(body.model, ASSISTANT)
        turn = await in_thread(m, lambda cancel: m.predictor.respond(body.message, body.session_id))
        if turn["handoff"] and "transcript" not in turn:  # the person taking over reads the conversation so far
            turn["transcript"] = await in_thread(m, lambda cancel: m.predictor.transcript(turn["session_id"]))
        return {"model": m.name, **turn}

    return api
