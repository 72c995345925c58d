"""Words and formats of the letters to data subjects, in Czech and English.

The fixed wording of GDPR Art. 15 (rights, legal bases, data categories, row states) and
how dates, times, amounts and durations are written in each language (Czech: `12. 1. 2030`,
`1 234,50`, `4 roky`; English: `12 January 2030`, `1,234.50`, `4 years`).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from lethe.declaration.duration import Duration
from lethe.declaration.letters import Language

_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_NBSP = "\u00a0"

LEGAL_BASES: dict[Language, dict[str, str]] = {
    "cs": {
        "consent": "váš souhlas (čl. 6 odst. 1 písm. a) GDPR)",
        "contract": "plnění smlouvy s vámi (čl. 6 odst. 1 písm. b) GDPR)",
        "legal_obligation": "právní povinnost (čl. 6 odst. 1 písm. c) GDPR)",
        "vital_interest": "ochrana životně důležitých zájmů (čl. 6 odst. 1 písm. d) GDPR)",
        "public_task": "úkol ve veřejném zájmu (čl. 6 odst. 1 písm. e) GDPR)",
        "legitimate_interest": "oprávněný zájem (čl. 6 odst. 1 písm. f) GDPR)",
    },
    "en": {
        "consent": "your consent (GDPR Art. 6(1)(a))",
        "contract": "performing a contract with you (GDPR Art. 6(1)(b))",
        "legal_obligation": "a legal obligation (GDPR Art. 6(1)(c))",
        "vital_interest": "protecting vital interests (GDPR Art. 6(1)(d))",
        "public_task": "a task in the public interest (GDPR Art. 6(1)(e))",
        "legitimate_interest": "a legitimate interest (GDPR Art. 6(1)(f))",
    },
}

# Row states other than `active`, as a data subject reads them.
STATES: dict[Language, dict[str, str]] = {
    "cs": {
        "restricted": "omezené zpracování: údaje jen uchováváme, jinak je nepoužíváme",
        "pseudonymized": "pseudonymizováno: vaše jméno a adresu jsme nahradili kódem,"
        " klíč k němu je uložen odděleně",
        "anonymized": "anonymizováno: už se k vám nevztahuje",
        "expired": "ke smazání při nejbližším zpracování",
    },
    "en": {
        "restricted": "restricted: we only store these data and use them for nothing else",
        "pseudonymized": "pseudonymized: your name and address are replaced by a code whose"
        " key is kept separately",
        "anonymized": "anonymized: no longer linked to you",
        "expired": "to be erased at the next processing run",
    },
}

# Data categories in words: the most specific Fides key (or its nearest ancestor) listed.
CATEGORIES: dict[str, tuple[str, str]] = {
    "user.unique_id": ("identifikátory (čísla zákazníka a záznamů)", "identifiers"),
    "user.name": ("jméno a příjmení", "name"),
    "user.account": ("údaje zákaznického účtu", "account details"),
    "user.contact": ("kontaktní údaje", "contact details"),
    "user.contact.email": ("e-mailová adresa", "e-mail address"),
    "user.contact.phone_number": ("telefonní číslo", "telephone number"),
    "user.contact.address": ("adresa", "postal address"),
    "user.demographic": ("demografické údaje", "demographic data"),
    "user.demographic.date_of_birth": ("datum narození", "date of birth"),
    "user.behavior": ("údaje o vaší aktivitě", "activity data"),
    "user.behavior.purchase_history": ("historie nákupů", "purchase history"),
    "user.financial": ("fakturační a platební údaje", "invoicing and payment data"),
    "user.payment": ("platební údaje", "payment data"),
    "user.privacy_preferences": ("souhlasy a jejich doklad", "your consent and its evidence"),
    "user.device": ("údaje o zařízení", "device data"),
    "user.device.ip_address": ("IP adresa", "IP address"),
    "user.location": ("údaje o poloze", "location data"),
    "user.content": ("obsah, který jste nám poskytli", "content you gave us"),
    "user.content.private": ("poznámky k vašemu případu", "notes about your case"),
    "user": ("další osobní údaje", "other personal data"),
    "system.operations": (
        "provozní záznamy (čísla objednávek a zásilek, data)",
        "operational records (order and shipment numbers, dates)",
    ),
    "system": ("systémové údaje", "system data"),
}


def category(key: str, language: Language) -> str:
    """A Fides data category in words (its nearest listed ancestor)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        words = CATEGORIES.get(".".join(parts[:end]))
        if words:
            return words[0] if language == "cs" else words[1]
    return key


def date(value: dt.date, language: Language) -> str:
    """`12. 1. 2030` / `12 January 2030`."""
    if language == "cs":
        return f"{value.day}. {value.month}. {value.year}"
    return f"{value.day} {_MONTHS_EN[value.month - 1]} {value.year}"


def timestamp(value: dt.datetime, language: Language) -> str:
    """`2. 12. 2025 9:00` / `2 December 2025, 09:00` (seconds only when set)."""
    clock = f"{value.hour}:{value.minute:02d}" if language == "cs" else f"{value:%H:%M}"
    if value.second:
        clock += f":{value.second:02d}"
    return f"{date(value, language)}{' ' if language == 'cs' else ', '}{clock}"


def number(value: Decimal | int | float | str, language: Language) -> str:
    """`1 234,50` / `1,234.50`: thousands grouped, the value's own decimals kept."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    text = f"{amount:,f}"
    if language == "cs":
        return text.replace(",", _NBSP).replace(".", ",")
    return text


def _plural(n: int, forms: tuple[str, str, str]) -> str:
    """Czech plural: 1 rok, 2-4 roky, 5 let (forms for 1, 2-4, else)."""
    if n == 1:
        return forms[0]
    return forms[1] if 2 <= n <= 4 else forms[2]


def duration(value: Duration, language: Language) -> str:
    """`4 roky a 6 měsíců` / `4 years and 6 months` (a sum of calendar units)."""
    units = (
        (value.years, ("rok", "roky", "let"), "year"),
        (value.months, ("měsíc", "měsíce", "měsíců"), "month"),
        (value.days, ("den", "dny", "dní"), "day"),
    )
    terms = [
        f"{n}{_NBSP}{_plural(n, cs)}" if language == "cs" else f"{n} {en}{'s' if n != 1 else ''}"
        for n, cs, en in units
        if n
    ]
    joiner = " a " if language == "cs" else " and "
    return joiner.join(terms) or ("0 dní" if language == "cs" else "0 days")


# Fixed wording of the letters.
PHRASES: dict[Language, dict[str, str]] = {
    "cs": {
        "language": "Česky",
        "title_access": "Informace o zpracování vašich osobních údajů",
        "title_portability": "Vaše osobní údaje ve strojově čitelné podobě",
        "request": "Vaše žádost {id} ze dne {received}",
        "date": "Datum",
        "intro_access": "na základě vaší žádosti podle čl. 15 obecného nařízení o ochraně"
        " osobních údajů (GDPR) vám sdělujeme, jaké osobní údaje o vás zpracováváme, proč,"
        " jak dlouho a komu je předáváme. Na konci dopisu najdete svá práva.",
        "intro_portability": "na základě vaší žádosti podle čl. 20 GDPR vám předáváme údaje,"
        " které jste nám poskytli na základě souhlasu nebo smlouvy, ve strojově čitelné"
        " podobě (soubory subject.json a CSV v tomto archivu). Tento dopis je shrnuje.",
        "greeting": "Dobrý den,",
        "controller": "Správce údajů",
        "contact": "Kontakt",
        "dpo": "Pověřenec pro ochranu osobních údajů",
        "no_dpo": "není jmenován; pište prosím na kontakt správce",
        "no_controller": "Správce v zásadách neuveden.",
        "purposes": "Proč vaše údaje zpracováváme",
        "legal_basis": "Právní základ",
        "retention": "Doba uložení",
        "categories": "Jaké údaje o vás máme",
        "recipients": "Komu údaje předáváme",
        "no_recipients": "Vaše údaje nepředáváme žádnému zpracovateli ani jinému příjemci.",
        "recipient_for": "pro účel",
        "contract_ended": "smlouva skončila {date}; od té doby mu údaje nepředáváme",
        "contract_until": "smlouva do {date}",
        "transfers": "předání mimo EU/EHP",
        "no_transfers": "žádné předání mimo EU/EHP",
        "data": "Vaše údaje",
        "rows": "{n} záznam|{n} záznamy|{n} záznamů",
        "why": "Proč",
        "how_long": "Jak dlouho",
        "state": "Stav",
        "until": "do {date}",
        "open_ended": "bez pevného data, dokud trvá: {purposes}",
        "empty": "—",
        "yes": "ano",
        "no": "ne",
        "times": "Časy jsou uvedeny v časovém pásmu {zone}.",
        "rule_from": "{duration}, počítáno od údaje {anchor}",
        "rule_until": "do data v údaji {anchor}",
        "rule_or": ", a není-li vyplněn, od {anchor}",
        "rule_plus": " + {duration}",
        "rule_open": "; dokud údaj není vyplněn, bez omezení",
        "rule_early": "; končí dříve k datu {anchor}",
        "source": "Odkud údaje máme",
        "source_default": "Údaje pocházejí z těchto našich evidencí: {tables}.",
        "automated": "Automatizované rozhodování",
        "rights": "Vaše práva",
        "rights_intro": "Svá práva můžete uplatnit u správce na kontaktu výše. Máte právo:",
        "right_rectification": "na opravu nepřesných údajů (čl. 16 GDPR)",
        "right_erasure": "na výmaz údajů, které už nepotřebujeme nebo které zpracováváme"
        " neoprávněně (čl. 17 GDPR)",
        "right_restriction": "na omezení zpracování (čl. 18 GDPR)",
        "right_objection": "vznést námitku proti zpracování na základě oprávněného zájmu a"
        " kdykoli proti přímému marketingu (čl. 21 GDPR)",
        "right_portability": "na přenositelnost údajů, které jste nám poskytli na základě"
        " souhlasu nebo smlouvy (čl. 20 GDPR)",
        "right_withdraw": "kdykoli odvolat souhlas; zpracování před odvoláním zůstává"
        " zákonné (čl. 7 odst. 3 GDPR)",
        "complaint": "Stížnost u dozorového úřadu",
        "complaint_text": "Pokud se domníváte, že vaše údaje zpracováváme v rozporu s"
        " předpisy, můžete podat stížnost u dozorového úřadu (čl. 77 GDPR):",
        "machine": "Úplné údaje ve strojově čitelné podobě obsahuje soubor subject.json a"
        " soubory CSV v tomto archivu.",
        "erasure_done": "vaše žádost o výmaz {id} ze dne {received} byla vyřízena: vaše"
        " osobní údaje jsme vymazali nebo anonymizovali.",
        "erasure_kept": "Vymazat zatím nesmíme tyto záznamy; jejich zpracování je omezeno a"
        " smažeme je, jakmile důvod pomine:",
        "erasure_kept_row": "{table}: {rows}; účel: {purposes}; {until}",
        "erasure_title": "Vyřízení žádosti o výmaz osobních údajů",
        "erasure_exports": "Smazali jsme také {n} dřívější export vašich údajů.|Smazali jsme"
        " také {n} dřívější exporty vašich údajů.|Smazali jsme také {n} dřívějších exportů"
        " vašich údajů.",
        "erasure_nothing": "Žádné vaše údaje už neuchováváme.",
        "regards": "S pozdravem",
    },
    "en": {
        "language": "English",
        "title_access": "Information about the processing of your personal data",
        "title_portability": "Your personal data in a machine-readable format",
        "request": "Your request {id} of {received}",
        "date": "Date",
        "intro_access": "As you asked under Article 15 of the General Data Protection"
        " Regulation (GDPR), this letter tells you which personal data about you we process,"
        " why, for how long and to whom we pass them. Your rights are at the end.",
        "intro_portability": "As you asked under Article 20 GDPR, you receive the data you gave"
        " us under your consent or a contract in a machine-readable format (subject.json and"
        " the CSV files in this archive). This letter summarizes them.",
        "greeting": "Dear customer,",
        "controller": "Controller",
        "contact": "Contact",
        "dpo": "Data protection officer",
        "no_dpo": "none appointed; please write to the controller's contact",
        "no_controller": "The policy names no controller.",
        "purposes": "Why we process your data",
        "legal_basis": "Legal basis",
        "retention": "How long we keep them",
        "categories": "Which data about you we hold",
        "recipients": "Who receives your data",
        "no_recipients": "We pass your data to no processor or other recipient.",
        "recipient_for": "for",
        "contract_ended": "contract ended on {date}; nothing passed to it since",
        "contract_until": "contract until {date}",
        "transfers": "transfers outside the EU/EEA",
        "no_transfers": "no transfer outside the EU/EEA",
        "data": "Your data",
        "rows": "{n} record|{n} records|{n} records",
        "why": "Why",
        "how_long": "How long",
        "state": "Status",
        "until": "until {date}",
        "open_ended": "no fixed date, while this lasts: {purposes}",
        "empty": "—",
        "yes": "yes",
        "no": "no",
        "times": "Times are given in the {zone} time zone.",
        "rule_from": "{duration} from {anchor}",
        "rule_until": "until the date in {anchor}",
        "rule_or": ", or from {anchor} if that is not set",
        "rule_plus": " + {duration}",
        "rule_open": "; without limit while it is not set",
        "rule_early": "; ends earlier at {anchor}",
        "source": "Where your data come from",
        "source_default": "The data come from these records of ours: {tables}.",
        "automated": "Automated decisions",
        "rights": "Your rights",
        "rights_intro": "You can exercise your rights with the controller at the contact"
        " above. You have the right:",
        "right_rectification": "to have inaccurate data rectified (GDPR Art. 16)",
        "right_erasure": "to erasure of data we no longer need or process unlawfully"
        " (GDPR Art. 17)",
        "right_restriction": "to restriction of processing (GDPR Art. 18)",
        "right_objection": "to object to processing based on a legitimate interest, and at any"
        " time to direct marketing (GDPR Art. 21)",
        "right_portability": "to data portability for data you gave us under consent or a"
        " contract (GDPR Art. 20)",
        "right_withdraw": "to withdraw your consent at any time, without affecting the"
        " processing before (GDPR Art. 7(3))",
        "complaint": "Complaint to the supervisory authority",
        "complaint_text": "If you believe we process your data unlawfully, you may lodge a"
        " complaint with the supervisory authority (GDPR Art. 77):",
        "machine": "All the data, machine-readable, are in subject.json and the CSV files of"
        " this archive.",
        "erasure_done": "Your erasure request {id} of {received} has been carried out: we have"
        " erased or anonymized your personal data.",
        "erasure_kept": "We may not erase these records yet; their processing is restricted and"
        " we erase them as soon as the reason ends:",
        "erasure_kept_row": "{table}: {rows}; purpose: {purposes}; {until}",
        "erasure_title": "Your request for erasure of personal data",
        "erasure_exports": "We also deleted {n} earlier export of your data.|We also deleted"
        " {n} earlier exports of your data.|We also deleted {n} earlier exports of your data.",
        "erasure_nothing": "We keep no data about you any more.",
        "regards": "Kind regards",
    },
}


def count(phrase: str, n: int, language: Language) -> str:
    """`1 záznam`, `3 záznamy`, `5 záznamů` from a `one|few|many` phrase."""
    one, few, many = phrase.split("|")
    if language == "cs":
        form = one if n == 1 else few if 2 <= n <= 4 else many
    else:
        form = one if n == 1 else many
    return form.format(n=n)
