"""The labeling app's database: projects, items, annotators, assignments and labels.

Storage goes through SQLAlchemy: a file path is an embedded SQLite database (WAL journal,
synchronous=FULL, so a label is on disk before it is acknowledged and a killed server loses
none), and any SQLAlchemy URL (postgresql://...) serves a team. One database holds several
projects.

An item is one prompt with its K responses (canonical order, as imported): K >= 2 responses
are compared (ranked), a single response is rated (good / bad, "thumbs"). Each item is shown
to `overlap` annotators, never twice to the same one; gold items (known answer) are mixed in at
`gold_rate` and every annotator may see each once; a gold comparison knows its ranks, a gold
rating whether the response is good. Showing an item to an annotator creates an
assignment, which records the display order (randomised per annotator); the label submitted for
it is stored in canonical order. An assignment not answered within `lease_minutes` is given
back, so a closed browser tab does not hold an item forever.

Tokens are stored as SHA-256 hashes: the database alone does not let anyone log in. A revoked
annotator's token no longer logs in; reissuing gives them a new one (the old one stays dead).

A database made by an older tether lacks the newer columns: they are added on opening
(`add_missing_columns`), with their defaults, so old projects keep working.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateColumn

from tether.errors import ConfigError

# a comparison is answered with ranks, "both bad" or "can't tell"; a rating with good, bad or
# "can't tell"
COMPARE_CHOICES = ("rank", "both_bad", "cant_tell")
RATE_CHOICES = ("good", "bad", "cant_tell")
RATINGS = {"good": True, "bad": False}  # a rating's choice -> its label in a KTO row
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored as naive UTC


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    k: Mapped[int] = mapped_column(Integer, default=2)  # the most responses of any item
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    lease_minutes: Mapped[float] = mapped_column(Float, default=30.0)
    created: Mapped[datetime] = mapped_column(DateTime, default=now)
    # Markdown shown to annotators on the labeling page
    guidelines: Mapped[str] = mapped_column(Text, default="", server_default="")


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of messages
    responses: Mapped[list] = mapped_column(JSON)
    # The known answer of a gold item: its ranks (a comparison) or true/false (a rating, good or
    # bad). none_as_null: None is SQL NULL (not JSON null), so `IS NULL` finds the non-gold
    # items. The column keeps its first name, so older databases open unchanged.
    gold: Mapped[list | bool | None] = mapped_column("gold_ranks", JSON(none_as_null=True),
                                                     nullable=True)
    # Active sampling: higher is served first (e.g. minus the reward model's smallest margin).
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    source: Mapped[str] = mapped_column(String(512), default="")  # file:line it came from
    # Whether each response ended with EOS (`tether sample`'s flags, canonical order), so an
    # export tells DPO which never did; NULL where the import had no flags, as in a
    # database from before this column: every response ended.
    finished: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime, default=now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)  # never shown twice
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    order: Mapped[list] = mapped_column(JSON)  # order[p] = canonical index shown at position p
    created: Mapped[datetime] = mapped_column(DateTime, default=now)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # unique: a resubmitted form finds its label instead of writing a second one
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(16))
    ranks: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    rationale: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime, default=now)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def dense_ranks(ranks: Sequence[int]) -> list[int]:
    """[3, 1, 3] -> [1, 0, 1]: the same order and ties, ranks 0, 1, 2, ..."""
    levels = sorted(set(ranks))
    return [levels.index(r) for r in ranks]


def is_rating(item: Item) -> bool:
    return len(item.responses) == 1


def add_missing_columns(engine: Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for every model column an existing table lacks (a database
    made by an older tether); each such column has a server default or is nullable, so old
    rows get its default or NULL."""
    tables = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not tables.has_table(table.name):
                continue
            have = {c["name"] for c in tables.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                spec = CreateColumn(column).compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {spec}"))


def engine_for(db: str) -> Engine:
    """An engine for a SQLAlchemy URL, or for a file path (SQLite, created if missing)."""
    if "://" in db:
        try:
            url = make_url(db)
        except ArgumentError:
            raise ConfigError(f"db: '{db}' is not a valid SQLAlchemy URL") from None
    else:
        path = Path(db).expanduser()
        if path.is_dir():
            raise ConfigError(f"db: '{db}' is a directory; give a database file such as "
                              f"labels.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        url = make_url(f"sqlite:///{path}")
    sqlite = url.get_backend_name() == "sqlite"
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}
                           if sqlite else {})
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cur.execute("PRAGMA synchronous=FULL")  # acknowledged = on disk
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


@dataclass
class NextItem:
    assignment: str
    prompt: Any
    responses: list[str]  # display order
    gold: bool
    # after an undo: the label taken back, in display order, for the page to show again
    previous: dict | None = None


class Store:
    """All reads and writes of the labeling database. Thread-safe: the server calls it from
    its worker threads. Writes are serialised by one lock, which SQLite needs anyway (a single
    writer) and which makes "give this item to at most `overlap` annotators" exact."""

    def __init__(self, db: str, must_exist: bool = False):
        """`must_exist`: for commands that only read, an SQLite file that is not there is an
        error rather than a new empty database."""
        if must_exist and "://" not in db and not Path(db).is_file():
            raise ConfigError(f"{db}: no labeling database there (`tether label import` "
                              f"creates one)")
        self.engine = engine_for(db)
        # what messages call the database: a URL without its password
        self.db = self.engine.url.render_as_string(hide_password=True) if "://" in db else db
        try:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
        except OperationalError as e:
            raise ConfigError(f"db: cannot open '{db}': {e.orig}") from None
        self.write_lock = threading.Lock()
        self.rng = random.Random()

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- secrets and annotators ---------------------------------------------------------------

    def secret(self) -> bytes:
        """A per-database random key (for CSRF tokens), created on first use."""
        with self.write_lock, self.session() as s:
            row = s.get(Meta, "secret")
            if row is None:
                row = Meta(key="secret", value=secrets.token_hex(32))
                s.add(row)
                s.commit()
            return bytes.fromhex(row.value)

    def add_annotator(self, name: str, admin: bool = False, token: str | None = None) -> str:
        """Create an annotator; returns their token (shown once: only its hash is stored)."""
        if not PROJECT_NAME.match(name):
            raise ConfigError(f"annotator name '{name}': use letters, digits, '_', '.', '-' "
                              f"(at most 64)")
        token = token or "tt_" + secrets.token_urlsafe(24)
        with self.write_lock, self.session() as s:
            if s.scalar(select(Annotator).where(Annotator.name == name)) is not None:
                raise ConfigError(f"annotator '{name}' already exists in {self.db}")
            s.add(Annotator(name=name, token_hash=hash_token(token), admin=admin))
            s.commit()
        return token

    def annotator_for_token(self, token: str) -> Annotator | None:
        with self.session() as s:
            return s.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token),
                                                    Annotator.revoked.is_(False)))

    def revoke(self, name: str) -> None:
        """The annotator's token stops working at once, and the items they hold unanswered go
        back to the others; their labels stay."""
        with self.write_lock, self.session() as s:
            who = self._annotator_named(s, name)
            who.revoked = True
            for a in s.scalars(select(Assignment).outerjoin(
                    Label, Label.assignment_id == Assignment.id).where(
                    Assignment.annotator_id == who.id, Label.id.is_(None))):
                s.delete(a)
            s.commit()

    def reissue(self, name: str) -> str:
        """A new token for the annotator (revoked or not); the old one stops working."""
        token = "tt_" + secrets.token_urlsafe(24)
        with self.write_lock, self.session() as s:
            who = self._annotator_named(s, name)
            who.token_hash, who.revoked = hash_token(token), False
            s.commit()
        return token

    def _annotator_named(self, s: Session, name: str) -> Annotator:
        who = s.scalar(select(Annotator).where(Annotator.name == name))
        if who is None:
            raise LookupError(f"no annotator '{name}' in {self.db}")
        return who

    def annotators(self) -> list[Annotator]:
        with self.session() as s:
            return list(s.scalars(select(Annotator).order_by(Annotator.id)))

    # -- projects and items -------------------------------------------------------------------

    def project(self, name: str) -> Project | None:
        with self.session() as s:
            return s.scalar(select(Project).where(Project.name == name))

    def projects(self) -> list[Project]:
        with self.session() as s:
            return list(s.scalars(select(Project).order_by(Project.id)))

    def create_project(self, name: str, items: Sequence[dict], gold: Sequence[dict] = (),
                       overlap: int = 1, gold_rate: float = 0.0, lease_minutes: float = 30.0,
                       guidelines: str = "") -> Project:
        """A new project with its items, all in one transaction: a failed import leaves
        nothing behind. Items are {"prompt", "responses", "source"}; gold items also have
        "gold": their ranks, or true/false for a single response rated good/bad."""
        if not PROJECT_NAME.match(name):
            raise ConfigError(f"project name '{name}': use letters, digits, '_', '.', '-' "
                              f"(at most 64, starting with a letter or digit)")
        with self.write_lock, self.session() as s:
            if s.scalar(select(Project).where(Project.name == name)) is not None:
                raise ConfigError(f"project '{name}' already exists in {self.db}; choose "
                                  f"another name, or add the items to it (add=true)")
            project = Project(name=name, k=0, overlap=overlap, gold_rate=gold_rate,
                              lease_minutes=lease_minutes, guidelines=guidelines)
            s.add(project)
            s.flush()
            self._add_items(s, project, items, gold)
            s.commit()
            return project

    def add_items(self, name: str, items: Sequence[dict], gold: Sequence[dict] = (),
                  guidelines: str | None = None) -> Project:
        """More items (and gold items) for an existing project, the next round of labeling,
        in one transaction; its settings stay. `guidelines`, when given, replace the old."""
        with self.write_lock, self.session() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                raise ConfigError(f"{self.db}: no project '{name}' to add items to (leave out "
                                  f"add=true to create it)")
            self._add_items(s, project, items, gold)
            if guidelines is not None:
                project.guidelines = guidelines
            s.commit()
            return project

    @staticmethod
    def _add_items(s: Session, project: Project, items: Sequence[dict],
                   gold: Sequence[dict]) -> None:
        project.k = max([project.k, *(len(row["responses"]) for row in [*items, *gold])])
        for row in [*items, *gold]:
            answer = row.get("gold")
            if isinstance(answer, list):
                answer = dense_ranks(answer)
            s.add(Item(project_id=project.id, prompt=row["prompt"], responses=row["responses"],
                       gold=answer, source=row.get("source", "")[:512],
                       finished=row.get("finished")))

    def set_priorities(self, project: str, priorities: dict[int, float]) -> None:
        with self.write_lock, self.session() as s:
            for item_id, p in priorities.items():
                s.get(Item, item_id).priority = float(p)
            s.commit()

    def items(self, project: str) -> list[Item]:
        with self.session() as s:
            return list(s.scalars(select(Item).join(Project).where(Project.name == project)
                                  .order_by(Item.id)))

    # -- serving ------------------------------------------------------------------------------

    def next_item(self, project: Project, annotator: Annotator) -> NextItem | None:
        """The item this annotator should label next, creating its assignment: their
        unanswered one if any; else, with probability gold_rate, a gold item they have not
        seen; else the open item with the highest priority (then the one closest to its
        overlap, so items complete in turn and agreement can be measured early)."""
        with self.write_lock, self.session() as s:
            pending = s.execute(
                select(Assignment, Item).join(Item, Assignment.item_id == Item.id)
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Item.project_id == project.id, Assignment.annotator_id == annotator.id,
                       Label.id.is_(None))
                .order_by(Assignment.created)).first()
            if pending is not None:
                a, item = pending
                return self._shown(a, item)
            self._expire_leases(s, project)
            seen = select(Assignment.item_id).where(Assignment.annotator_id == annotator.id)
            item = None
            if project.gold_rate > 0 and self.rng.random() < project.gold_rate:
                item = s.scalar(select(Item).where(
                    Item.project_id == project.id, Item.gold.is_not(None),
                    Item.id.not_in(seen)).order_by(func.random()).limit(1))
            if item is None:
                taken = (select(func.count(Assignment.id)).where(Assignment.item_id == Item.id)
                         .correlate(Item).scalar_subquery())
                item = s.scalar(
                    select(Item).where(Item.project_id == project.id,
                                       Item.gold.is_(None), Item.id.not_in(seen),
                                       taken < project.overlap)
                    .order_by(Item.priority.desc(), taken.desc(), func.random()).limit(1))
            if item is None:
                return None
            order = list(range(len(item.responses)))
            self.rng.shuffle(order)
            a = Assignment(id=secrets.token_hex(16), item_id=item.id,
                           annotator_id=annotator.id, order=order)
            s.add(a)
            s.commit()
            return self._shown(a, item)

    @staticmethod
    def _shown(a: Assignment, item: Item) -> NextItem:
        return NextItem(a.id, item.prompt, [item.responses[i] for i in a.order],
                        item.gold is not None)

    @staticmethod
    def _expire_leases(s: Session, project: Project) -> None:
        cutoff = now() - timedelta(minutes=project.lease_minutes)
        stale = s.scalars(
            select(Assignment).join(Item, Assignment.item_id == Item.id)
            .outerjoin(Label, Label.assignment_id == Assignment.id)
            .where(Item.project_id == project.id, Label.id.is_(None),
                   Assignment.created < cutoff))
        for a in stale:
            s.delete(a)
        s.flush()

    def submit(self, project: Project, annotator: Annotator, assignment_id: str, choice: str,
               ranks: Sequence[int] | None, rationale: str = "") -> tuple[int, bool]:
        """Store a label for an assignment; returns (label id, duplicate). A second submission
        of the same assignment returns the first label, unchanged. Raises LookupError if the
        assignment does not exist (or has expired), PermissionError if it is someone else's,
        ValueError for a bad label."""
        with self.write_lock, self.session() as s:
            a = s.get(Assignment, assignment_id)
            item = None if a is None else s.get(Item, a.item_id)
            if a is not None and a.annotator_id != annotator.id:
                raise PermissionError("this item was assigned to another annotator")
            if a is None or item is None or item.project_id != project.id:
                raise LookupError("no such assignment in this project (it may have expired: "
                                  "load the next item)")
            done = s.scalar(select(Label).where(Label.assignment_id == a.id))
            if done is not None:
                return done.id, True
            allowed = RATE_CHOICES if is_rating(item) else COMPARE_CHOICES
            if choice not in allowed:
                what = "a rating" if is_rating(item) else "a comparison"
                raise ValueError(f"choice for {what} must be one of {', '.join(allowed)}, got "
                                 f"'{choice}'")
            canonical = None
            if choice == "rank":
                k = len(a.order)
                if (not isinstance(ranks, list) or len(ranks) != k
                        or not all(isinstance(r, int) and not isinstance(r, bool)
                                   for r in ranks)):
                    raise ValueError(f"ranks must be a list of {k} integers, one per response "
                                     f"in the order shown (lower is better, equal is a tie)")
                canonical = [0] * k
                for pos, r in enumerate(dense_ranks(ranks)):
                    canonical[a.order[pos]] = r
            label = Label(assignment_id=a.id, item_id=a.item_id, annotator_id=annotator.id,
                          choice=choice, ranks=canonical, rationale=(rationale or "")[:5000])
            s.add(label)
            try:
                s.commit()
            except IntegrityError:  # the same assignment raced in twice
                s.rollback()
                done = s.scalar(select(Label).where(Label.assignment_id == a.id))
                return done.id, True
            return label.id, False

    def undo_last(self, project: Project, annotator: Annotator) -> NextItem | None:
        """Take back this annotator's latest label in the project: the label is deleted and its
        item served to them again (first, with the label as `previous`, to edit or answer
        anew); an item they were shown but had not answered goes back to the pool. None when
        they have no label here."""
        with self.write_lock, self.session() as s:
            last = s.scalar(select(Label).join(Item, Label.item_id == Item.id).where(
                Item.project_id == project.id, Label.annotator_id == annotator.id)
                .order_by(Label.id.desc()).limit(1))
            if last is None:
                return None
            for a in s.scalars(select(Assignment).join(Item, Assignment.item_id == Item.id)
                               .outerjoin(Label, Label.assignment_id == Assignment.id)
                               .where(Item.project_id == project.id,
                                      Assignment.annotator_id == annotator.id,
                                      Label.id.is_(None))):
                s.delete(a)
            a, item = s.get(Assignment, last.assignment_id), s.get(Item, last.item_id)
            a.created = now()  # a fresh lease
            previous = {"choice": last.choice, "rationale": last.rationale,
                        "ranks": None if last.ranks is None else [last.ranks[i] for i in a.order]}
            s.delete(last)
            s.commit()
            shown = self._shown(a, item)
            shown.previous = previous
            return shown

    # -- reading labels -----------------------------------------------------------------------

    def labels(self, project: str, annotator: Annotator | None = None) -> list[dict]:
        """Every label of a project (or of one annotator) with its item, oldest first."""
        with self.session() as s:
            q = (select(Label, Item, Assignment, Annotator)
                 .join(Item, Label.item_id == Item.id)
                 .join(Project, Item.project_id == Project.id)
                 .join(Assignment, Label.assignment_id == Assignment.id)
                 .join(Annotator, Label.annotator_id == Annotator.id)
                 .where(Project.name == project).order_by(Label.id))
            if annotator is not None:
                q = q.where(Label.annotator_id == annotator.id)
            return [{"label": label.id, "item": item.id, "annotator": who.name,
                     "prompt": item.prompt, "responses": item.responses,
                     "choice": label.choice, "ranks": label.ranks, "order": a.order,
                     "rating": RATINGS.get(label.choice),
                     "gold": item.gold, "rationale": label.rationale,
                     "finished": item.finished,
                     "created": label.created.isoformat() + "Z"}
                    for label, item, a, who in s.execute(q)]

    def progress(self, project: Project, annotator: Annotator | None = None) -> dict[str, int]:
        """Labels done, the most there can be (non-gold items x overlap), and the items shown
        but not answered yet ("in_progress"), for the project; for one annotator (who may
        label each non-gold item once), their labels, the most they can give, and how many of
        those left to them others hold ("held_by_others": shown to them, not answered yet;
        each is answered, or comes back when its lease runs out)."""
        with self.session() as s:
            items = s.scalar(select(func.count(Item.id)).where(
                Item.project_id == project.id, Item.gold.is_(None)))
            q = (select(func.count(Label.id)).join(Item, Label.item_id == Item.id)
                 .where(Item.project_id == project.id, Item.gold.is_(None)))
            labels = (select(func.count(Label.id)).where(Label.item_id == Item.id)
                      .correlate(Item).scalar_subquery())
            if annotator is None:
                pending = s.scalar(
                    select(func.count(Assignment.id)).join(Item, Assignment.item_id == Item.id)
                    .outerjoin(Label, Label.assignment_id == Assignment.id)
                    .where(Item.project_id == project.id, Item.gold.is_(None),
                           Label.id.is_(None)))
                return {"done": s.scalar(q), "total": items * project.overlap,
                        "in_progress": pending}
            mine = s.scalar(q.where(Label.annotator_id == annotator.id))
            not_mine = Item.id.not_in(select(Assignment.item_id).where(
                Assignment.annotator_id == annotator.id))
            full = s.scalar(select(func.count(Item.id)).where(
                Item.project_id == project.id, Item.gold.is_(None), labels >= project.overlap,
                Item.id.not_in(select(Label.item_id).where(
                    Label.annotator_id == annotator.id))))
            taken = (select(func.count(Assignment.id)).where(Assignment.item_id == Item.id)
                     .correlate(Item).scalar_subquery())
            held = s.scalar(select(func.count(Item.id)).where(
                Item.project_id == project.id, Item.gold.is_(None), not_mine,
                labels < project.overlap, taken >= project.overlap))
            return {"done": mine, "total": items - full, "held_by_others": held}


def resolve_project(store: Store, name: str) -> Project:
    """The project called `name`, or the only one when no name is given; an error listing the
    projects otherwise."""
    projects = store.projects()
    if name:
        for p in projects:
            if p.name == name:
                return p
    elif len(projects) == 1:
        return projects[0]
    names = ", ".join(p.name for p in projects) or "none yet: `tether label import`"
    what = f"no project '{name}'" if name else "several projects: give project=NAME"
    raise ConfigError(f"{store.db}: {what} (projects: {names})")
