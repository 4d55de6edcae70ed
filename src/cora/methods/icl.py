"""ICL: the frozen backbone answers the text prompt zero-shot; nothing is trained."""

from cora.methods.base import LLMMethod


class ICL(LLMMethod):
    name = "icl"
