"""The synthetic warehouse's phone numbers: mobile numbers valid for each customer's country.

Every number is drawn from a mobile range that ``phonenumbers`` (pinned) accepts for the
customer's country: a prefix of that country's numbering plan (a US area code, a UK
``071``-``074`` mobile block, a German ``015x``/``017x`` network prefix, ...) followed by
random subscriber digits. None of the ten countries has a reserved fictional mobile range
big enough for a large warehouse (the UK's drama block is 1,000 numbers, France's 10,000,
North America's 555-01xx 100 per area code), so these are **random numbers in valid
ranges**: some are somebody's real number. The synthetic warehouse is only ever handed off
to the loopback ESP sandbox, so nobody is ever texted.

The numbers are written the ways warehouses hold them: mostly E.164 (``+447123456789``),
some spaced international (``+44 7123 456789``), some in national format
(``07123 456789``, read with the customer's country), and a small share of defects that no
country reads as valid: four digits short, five too many, a North American number without
its area code (``555-0123``), a ``0000000000`` placeholder. Household members sometimes
share the first member's number (in E.164, valid whatever their own country). Built a
whole block at a time with numpy: only the E.164 text is made per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

# Area codes in service (each one's every exchange 2xx-9xx is valid): 275 US, 40 Canadian.
_US_AREA_CODES = (
    "201 202 203 205 206 207 208 209 210 212 213 214 215 216 217 218 219 224 225 228 229 "
    "231 234 239 240 248 251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304 "
    "305 307 308 309 310 312 313 314 315 316 317 318 319 320 321 323 325 330 334 336 337 "
    "339 347 351 352 360 361 385 386 401 402 404 405 406 407 408 409 410 412 413 414 415 "
    "417 419 423 424 425 430 432 434 435 440 443 469 470 475 478 479 480 484 501 502 503 "
    "504 505 507 508 509 510 512 513 515 516 517 518 520 530 540 541 551 559 561 562 563 "
    "567 570 571 573 574 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 "
    "617 618 619 620 623 626 630 631 636 641 646 650 651 660 661 662 678 682 701 702 703 "
    "704 706 707 708 712 713 714 715 716 717 718 719 720 724 727 731 732 734 740 754 757 "
    "760 763 765 770 772 773 774 775 781 785 786 801 802 803 804 805 806 808 810 812 813 "
    "814 815 816 817 818 828 830 831 832 843 845 847 848 850 856 857 858 859 860 862 863 "
    "864 865 870 872 878 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 919 "
    "920 925 928 931 936 937 940 941 947 949 951 952 954 956 970 971 972 973 978 979 980 "
    "985 989"
).split()
_CA_AREA_CODES = (
    "204 226 236 249 250 289 306 343 365 403 416 418 431 437 438 450 506 514 519 548 579 "
    "581 587 604 613 639 647 672 705 709 778 780 782 807 819 825 867 873 902 905"
).split()

# country: (calling code, ((NSN prefix, subscriber digits), ...), national template by NSN
# length, international template by NSN length). '#' is the next digit of the NSN.
_NANP_FIRST = "23456789"  # a North American exchange starts with 2-9
_PLANS: dict[str, tuple[int, tuple[tuple[str, int], ...], dict[int, str], dict[int, str]]] = {
    "US": (1, tuple((a, 7) for a in _US_AREA_CODES), {10: "(###) ###-####"}, {10: "+1 ###-###-####"}),
    "CA": (1, tuple((a, 7) for a in _CA_AREA_CODES), {10: "(###) ###-####"}, {10: "+1 ###-###-####"}),
    "GB": (44, tuple((p, 8) for p in ("71", "72", "73", "74")),
           {10: "0#### ######"}, {10: "+44 #### ######"}),
    "DE": (49, (*((p, 8) for p in ("151", "152", "157", "159", "160", "162", "163")),
                *((f"17{d}", 7) for d in range(10))),
           {10: "0### #######", 11: "0### ########"}, {10: "+49 ### #######", 11: "+49 ### ########"}),
    "FR": (33, tuple((p, 7) for p in ("60", "61", "62", "64", "65", "66", "67", "68", "73", "74",
                                      "75", "76", "77", "78", "79")),
           {9: "0# ## ## ## ##"}, {9: "+33 # ## ## ## ##"}),
    "ES": (34, (("6", 8), ("71", 7), ("72", 7), ("73", 7), ("74", 7)),
           {9: "### ## ## ##"}, {9: "+34 ### ## ## ##"}),
    "IT": (39, tuple((f"3{d}", 8) for d in range(1, 10)),
           {10: "### ### ####"}, {10: "+39 ### ### ####"}),
    "NL": (31, tuple((p, 7) for p in ("61", "62", "63", "64", "65", "68")),
           {9: "0# ########"}, {9: "+31 # ########"}),
    "AU": (61, tuple((p, 7) for p in ("40", "41", "42", "43", "46")),
           {9: "0### ### ###"}, {9: "+61 ### ### ###"}),
    "BR": (55, tuple((f"{a}9", 8) for a in ("11", "21", "31", "41", "51", "61", "71", "81")),
           {11: "(##) #####-####"}, {11: "+55 ## #####-####"}),
}

# How a number is written (shares of customers with a phone).
E164, INTERNATIONAL, NATIONAL, SHORT, LONG, LOCAL, PLACEHOLDER = range(7)
_FORM_P = (0.80, 0.08, 0.092, 0.012, 0.006, 0.006, 0.004)
VALID_FORMS = (E164, INTERNATIONAL, NATIONAL)
_SHARED_PHONE = 0.20  # of non-first household members: the first member's number
_PLACEHOLDER = "0000000000"


class PhoneVocab:
    """The numbering plans as lookup arrays, indexed like the warehouse's country list."""

    def __init__(self, countries: Sequence[str]) -> None:
        plans = [_PLANS[c] for c in countries]
        self.cc = np.array([p[0] for p in plans], dtype=np.int64)
        self.nanp = np.array([p[0] == 1 for p in plans])
        self.offset = np.cumsum([0] + [len(p[1]) for p in plans])[:-1]
        self.count = np.array([len(p[1]) for p in plans], dtype=np.int64)
        entries = [e for p in plans for e in p[1]]
        self.prefix = np.array([int(e[0]) for e in entries], dtype=np.int64)
        self.free = np.array([e[1] for e in entries], dtype=np.int64)
        self.nsn_len = np.array([len(e[0]) + e[1] for e in entries], dtype=np.int64)
        self.national = [p[2] for p in plans]
        self.international = [p[3] for p in plans]


def _render(nsn: Array, length: int, template: str) -> list[str]:
    """NSNs of one length written into a template ('#' per digit), in a UCS-4 buffer."""
    width = len(template)
    buffer = np.empty((nsn.size, width), dtype=np.uint32)
    buffer[:] = np.frombuffer(template.encode("utf-32-le"), dtype=np.uint32)
    slots = [i for i, ch in enumerate(template) if ch == "#"]
    assert len(slots) == length
    rest = nsn.copy()
    for slot in reversed(slots):
        buffer[:, slot] = 48 + rest % 10
        rest //= 10
    out: list[str] = buffer.view(f"<U{width}").reshape(-1).tolist()
    return out


def synthetic_phones(
    rng: np.random.Generator,
    pv: PhoneVocab,
    country: Array,
    head: Array,
    is_head: Array,
    no_phone: Array,
) -> tuple[Array, Array, Array]:
    """(phone as written, the number an SMS suppression holds, form) for one block.

    ``country`` indexes the plans; ``head`` is each customer's household head (an index in
    the block). Every draw is made for the whole block, so the stream depends on n only.
    """
    n = country.size
    entry = pv.offset[country] + (rng.random(n) * pv.count[country]).astype(np.int64)
    free = pv.free[entry]
    first = np.where(pv.nanp[country], 2 + (rng.random(n) * 8).astype(np.int64),
                     (rng.random(n) * 10).astype(np.int64))
    scale = 10 ** (free - 1)
    rest = (rng.random(n) * scale).astype(np.int64)
    nsn = pv.prefix[entry] * (scale * 10) + first * scale + rest
    nsn_len = pv.nsn_len[entry]
    e164_digits = pv.cc[country] * 10**nsn_len + nsn
    form = rng.choice(len(_FORM_P), size=n, p=np.asarray(_FORM_P) / sum(_FORM_P))
    shared = ~is_head & ~no_phone[head] & np.isin(form[head], VALID_FORMS) & (
        rng.random(n) < _SHARED_PHONE)
    extra = rng.integers(0, 10**5, n)

    e164 = np.empty(n, dtype=object)
    e164[:] = [f"+{d}" for d in e164_digits.tolist()]
    phone = e164.copy()
    for c in range(pv.cc.size):
        mine = country == c
        for f, templates in ((NATIONAL, pv.national[c]), (INTERNATIONAL, pv.international[c])):
            for length, template in templates.items():
                at = np.flatnonzero(mine & (form == f) & (nsn_len == length))
                if at.size:
                    phone[at] = _render(nsn[at], length, template)
    form = np.where((form == LOCAL) & ~pv.nanp[country], SHORT, form)  # local: North America's
    for i in np.flatnonzero(form == SHORT).tolist():
        phone[i] = e164[i][:-4]
    for i in np.flatnonzero(form == LONG).tolist():
        phone[i] = f"{e164[i]}{extra[i]:05d}"
    local = np.flatnonzero(form == LOCAL)
    phone[local] = [f"555-{d % 10**4:04d}" for d in nsn[local].tolist()]  # 310-xxxx is Canada's
    phone[form == PLACEHOLDER] = _PLACEHOLDER
    phone[shared] = e164[head[shared]]
    e164[shared] = e164[head[shared]]
    form = np.where(shared, E164, form)
    valid = np.isin(form, VALID_FORMS)
    sms_address = np.where(valid, e164, phone)  # an ESP reports a STOP in E.164
    phone[no_phone] = None
    sms_address[no_phone] = None
    return phone, sms_address, form
