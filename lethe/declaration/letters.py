"""What the policy and schema say to data subjects: their letters' language and wording.

Access exports and erasure answers are letters to a person, written in Czech and English
(`LANGUAGES`); the policy's `letters.language` says which comes first. Purposes and
processors may carry their own wording per language (`letter: {cs: {title, text}}`), and
schema tables and columns a label per language (`label: {cs: ..., en: ...}`); without them
a letter falls back to the policy's description and the schema's names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Language = Literal["cs", "en"]
LANGUAGES: tuple[Language, ...] = ("cs", "en")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Wording(_Frozen):
    """A purpose or recipient as a data subject reads it: a short title and a sentence."""

    title: str
    text: str = ""


Labels = dict[Language, str]
Wordings = dict[Language, Wording]


class Authority(_Frozen):
    """The supervisory authority a data subject may complain to (GDPR Art. 77)."""

    name: Labels = {
        "cs": "Úřad pro ochranu osobních údajů",
        "en": "Úřad pro ochranu osobních údajů (the Czech Office for Personal Data Protection)",
    }
    address: str = "Pplk. Sochora 27, 170 00 Praha 7"
    email: str = "posta@uoou.gov.cz"
    web: str = "https://uoou.gov.cz"


class Letters(_Frozen):
    """The policy's `letters` section: what every letter to a data subject says."""

    language: Language = "en"
    # Where the data come from (GDPR Art. 15(1)(g)), per language.
    source: Labels = {}
    # Automated decisions and profiling (GDPR Art. 15(1)(h)), per language.
    automated_decisions: Labels = {}
    authority: Authority = Authority()

    @property
    def order(self) -> tuple[Language, ...]:
        """The letter's languages, the policy's first."""
        return (self.language, *(x for x in LANGUAGES if x != self.language))
