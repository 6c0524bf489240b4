"""The robust rule across client synthetic sets: capped claims and an embedding outlier test.

Per-reply checks (:mod:`fedcond.federated.validation`) cannot see a lie that only shows next to
the other clients' replies. Two cross-client steps run on the validated sets before they are
aggregated (``robust.enabled``; ``docs/robustness.md`` gives the threat model and the
measurements behind the defaults): the count cap, on by default, and the embedding outlier rule,
opt-in (``robust.outlier_nets`` > 0).

**Capped claims.** Real-sample counts are the client's word and weight the union. A client's
claimed total counts at most ``count_cap_factor`` times the upper median of the clients'
totals (the ``n // 2``-th smallest); a larger claim is scaled down, class proportions kept.
While fewer than half of the clients lie, that median is at most an honest client's total, so
a liar weighs at most ``count_cap_factor`` honest clients. The upper median (not the lower)
because non-IID partitions are skewed: on digits with Dirichlet(0.1) over 10 clients the
honest totals span 17 to 359 with upper median 169, so the default factor 3 caps no honest
client.

A claim is also bounded by the images sent (:func:`bound_claims_by_images`): a class's images
carry at most ``claim / min(ipc, claim)`` each, so a liar cannot move its capped total onto fewer
stored images than an honest client sends. It can still send ``ipc`` copies (or jittered copies)
of one image: the weight then rests on one picture, and the count cap is the bound.

**Embedding outliers.** Each client's images of class ``c`` are embedded by a few randomly
initialised networks (DM's own view of a class: the mean embedding). A client's class is judged
against a *reference*: the server's own real images of the class when it holds some
(``robust.reference_per_class``, :func:`server_reference`), else one made of the other clients
only: the coordinate-wise median of their class means, weighted by how many images of the class
each sent. A client never shapes the reference
that judges it, so a label flipper that sends most of a class's images cannot make its flipped
images the class's prototype. The weight is the number of images sent, not the claimed
real-sample count: it is bounded by ``ipc`` per class (validation caps it), so a liar cannot buy
the reference with an inflated claim.

A class is judged only where the others form a majority: at least three other clients hold it
(with two, one of them always sent half or more), together they sent at least as many of its
images as the judged client, and none of them sent half of those images or more. Under non-IID
partitions a class is typically held by one client with many images and a few with one to five,
whose sets are small and noisy (the release gate withholds their near-copies); a reference that
one client owns is that client's word, and small sets are no reference for the client that holds
the class. A client's class is an outlier when

- its mean lies closer to another class's reference than to its own by ``outlier_margin``
  (flipped labels, images of the wrong class), or
- its distance to its class's reference exceeds ``outlier_spread`` times the median such
  distance over classes held by at least three clients (noise, adversarial or off-manifold
  images).

Outlier classes are removed from that client's set; a client with more than half of its judged
classes flagged is rejected altogether, one at a time (the most flagged classes first), and the
rule judges the others again without it, so a rejected client's sets shape no reference. A class
without a majority of other holders cannot be judged. The embedding networks are seeded by the
server (``seed``), so a round is reproducible.

**Failing closed.** References made of clients are only as honest as most clients. Where the
rule would reject half of the clients or more, or every remaining set, its verdicts contradict that
premise (a coalition outvoting a class's honest holders, clients with another class order): it
aggregates nothing that round and says why (:attr:`RobustOutcome.alarm`); the server keeps its
previous model. With a server reference the same stop applies: the reference is the server's,
but the typical distance the spread test scales by comes from the clients (one vote each, the
median over clients of each client's median distance).

A coalition need not reach that alarm: under non-IID partitions, a few colluders who all send
images of one class labelled as another outnumber that class's one or two honest holders, who
are then judged by the colluders' images and rejected. That is why the rule judged by clients is
opt-in, and a server that holds a few labelled images per class should use them as the reference.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedcond.config import RobustConfig
from fedcond.data.registry import DatasetSpec
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.validation import ClientSet
from fedcond.models import get_model

__all__ = [
    "RobustOutcome",
    "ServerReference",
    "bound_claims_by_images",
    "cap_claimed_counts",
    "embedding_outliers",
    "robust_sets",
    "server_reference",
    "weighted_median",
]

logger = logging.getLogger(__name__)

#: holders a class needs before its prototype sets the typical spread
_SPREAD_MIN_HOLDERS = 3
#: other holders a class needs before a client's images of it are judged: with two, one of them
#: always sent half or more, and a reference that one client owns is that client's word
_MIN_OTHER_HOLDERS = 3


@dataclass(frozen=True)
class RobustOutcome:
    """What the robust rule kept and why it changed the rest.

    Attributes
    ----------
    sets : list[ClientSet]
        The sets to aggregate (claims capped, outlier classes removed).
    rejected : dict[int, str]
        Node id -> reason, for sets removed altogether.
    neutralised : dict[int, list[str]]
        Node id -> what was changed in a kept set (a capped claim, removed classes).
    alarm : str | None
        Why the rule failed closed (``sets`` is then empty): its verdicts would reject half of
        the clients or more, or every remaining set (each an outlier on more than half of its
        judged classes), which contradicts the honest majority it assumes.
    """

    sets: list[ClientSet]
    rejected: dict[int, str] = field(default_factory=dict)
    neutralised: dict[int, list[str]] = field(default_factory=dict)
    alarm: str | None = None


@dataclass(frozen=True)
class ServerReference:
    """Labelled real images the server holds: the outlier rule's reference for every class.

    Attributes
    ----------
    images : torch.Tensor
        ``N x C x H x W`` in the dataset's normalised space.
    labels : torch.Tensor
        ``N`` class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor


def server_reference(images: torch.Tensor, labels: torch.Tensor, *, per_class: int, num_classes: int,
                     generator: torch.Generator) -> ServerReference:
    """Draw ``per_class`` images of every class from the server's own labelled data.

    Raises
    ------
    ValueError
        When a class has fewer than ``per_class`` images (the reference would not judge it).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    picks = []
    for c in range(num_classes):
        pool = (labels == c).nonzero().flatten()
        if len(pool) < per_class:
            raise ValueError(
                f"robust.reference_per_class={per_class}, but the server's data holds {len(pool)} images of class {c}"
            )
        picks.append(pool[torch.randperm(len(pool), generator=generator)[:per_class]])
    chosen = torch.cat(picks)
    return ServerReference(images=images[chosen].clone(), labels=labels[chosen].clone())


def cap_claimed_counts(
    sets: Sequence[ClientSet], *, factor: float
) -> tuple[list[ClientSet], dict[int, str]]:
    """Scale down every claimed total above ``factor`` times the upper median total.

    Returns
    -------
    tuple[list[ClientSet], dict[int, str]]
        The sets (capped ones replaced) and node id -> a note for each capped claim.

    Raises
    ------
    ValueError
        For a factor below 1 (it would cap the median client itself).
    """
    if not factor >= 1:
        raise ValueError(f"count_cap_factor must be >= 1, got {factor}")
    if not sets:
        return [], {}
    totals = torch.stack([s.class_counts.sum() for s in sets]).double()
    cap = factor * float(totals.sort().values[len(sets) // 2])  # the upper median
    out, notes = [], {}
    for s, total in zip(sets, totals.tolist(), strict=True):
        if total <= cap:
            out.append(s)
            continue
        scaled = torch.floor(s.class_counts.double() * (cap / total)).to(torch.int64)
        scaled = torch.where(s.class_counts > 0, scaled.clamp(min=1), scaled)  # a held class keeps weight > 0
        out.append(dataclasses.replace(s, class_counts=scaled))
        notes[s.node_id] = (
            f"claimed {int(total)} real samples, capped to {int(scaled.sum())} ({factor:g} x the median claim)"
        )
    return out, notes


def bound_claims_by_images(sets: Sequence[ClientSet], *, ipc: int) -> tuple[list[ClientSet], dict[int, str]]:
    """Scale each class's claim down to the images the client sent of it.

    An honest client sends ``ipc`` images of every class it holds (repeating a small class's
    images up to ``ipc``), less the near-copies its release gate withholds, so it sends at least
    ``min(ipc, n_kc)`` for ``n_kc`` real samples unless the gate withheld some. A client that
    sends ``m_kc`` fewer claims at most ``n_kc * m_kc / min(ipc, n_kc)``: each image carries at
    most ``n_kc / ipc`` real samples' weight where ``n_kc >= ipc`` (an honest image's weight) and
    one below that. A liar therefore cannot put its capped claim on one stored image; ``ipc``
    copies of one image are ``ipc`` images to this bound (the count cap still holds). An honest
    client whose gate withheld near-copies keeps its weight per image and loses the withheld
    images' share; a claimed class with no image sent keeps a count of 1 (it weighs no image,
    and only scales the union's total).

    Returns
    -------
    tuple[list[ClientSet], dict[int, str]]
        The sets (bounded ones replaced) and node id -> a note for each bounded claim.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    out, notes = [], {}
    for s in sets:
        counts = s.class_counts.to(torch.int64)
        sent = torch.bincount(s.synthetic.labels.to(torch.int64), minlength=counts.numel())[: counts.numel()]
        expected = counts.clamp(max=ipc)
        short = (counts > 0) & (sent < expected)
        if not bool(short.any()):
            out.append(s)
            continue
        bounded = torch.where(short, (counts * sent) // expected.clamp(min=1), counts)
        bounded = torch.where(counts > 0, bounded.clamp(min=1), bounded)  # a held class keeps weight > 0
        out.append(dataclasses.replace(s, class_counts=bounded))
        classes = short.nonzero().flatten().tolist()
        notes[s.node_id] = (
            f"classes {classes}: {[int(sent[c]) for c in classes]} images sent for claims of "
            f"{[int(counts[c]) for c in classes]} real samples, counted as {[int(bounded[c]) for c in classes]} "
            f"(at most claim / min(ipc={ipc}, claim) per image)"
        )
    return out, notes


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise weighted median of the rows of ``values``.

    Per coordinate, the smallest value at which the cumulative weight of the sorted values
    reaches half of the total weight. With equal weights it is the lower median.

    Parameters
    ----------
    values : torch.Tensor
        ``(n, d)`` rows.
    weights : torch.Tensor
        ``(n,)`` non-negative weights with a positive sum.
    """
    if values.ndim != 2 or weights.shape != (values.shape[0],):
        raise ValueError(
            f"expected (n, d) values and (n,) weights, got {tuple(values.shape)} and {tuple(weights.shape)}"
        )
    weights = weights.to(values.dtype)
    if not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
        raise ValueError("weights must be non-negative with a positive sum")
    ordered, order = values.sort(dim=0)
    cumulative = weights[order].cumsum(dim=0)
    first = (cumulative >= 0.5 * weights.sum()).to(torch.int64).argmax(dim=0, keepdim=True)
    return ordered.gather(0, first).squeeze(0)


def _embedder(
    *, spec: DatasetSpec, model_name: str, nets: int, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping images to their embeddings under ``nets`` seeded random networks, concatenated."""
    networks = [
        get_model(model_name, spec, generator=torch.Generator().manual_seed(seed * 7919 + k)).eval()
        for k in range(nets)
    ]

    def embed(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = [
                torch.cat([net.embed(chunk) for chunk in images.float().split(1024)]).flatten(1) for net in networks
            ]
        return torch.cat(features, dim=1).double()

    return embed


def _class_means(
    sets: Sequence[ClientSet], embed: Callable[[torch.Tensor], torch.Tensor]
) -> dict[tuple[int, int], torch.Tensor]:
    """(node id, class) -> the mean embedding (:func:`_embedder`) of that set's images of that class."""
    decoded = [s.synthetic.decoded() for s in sets]
    images = torch.cat([d.images for d in decoded]).float()
    owners = torch.cat([torch.full((len(d),), i) for i, d in enumerate(decoded)])
    labels = torch.cat([d.labels for d in decoded])
    embedded = embed(images)
    means = {}
    for i, s in enumerate(sets):
        for c in labels[owners == i].unique().tolist():
            means[(s.node_id, int(c))] = embedded[(owners == i) & (labels == c)].mean(0)
    return means


def _reference_means(
    reference: ServerReference, embed: Callable[[torch.Tensor], torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Class -> the mean embedding of the server's reference images of that class."""
    embedded = embed(reference.images)
    return {int(c): embedded[reference.labels == c].mean(0) for c in reference.labels.unique().tolist()}


def _has_majority(others: list[float], own: float) -> bool:
    """Whether the other holders' images (counts per holder) can judge a client's ``own`` images of a class."""
    total = sum(others)
    return len(others) >= _MIN_OTHER_HOLDERS and total >= own and max(others) < 0.5 * total


def embedding_outliers(
    sets: Sequence[ClientSet],
    *,
    spec: DatasetSpec,
    model_name: str,
    nets: int,
    margin: float,
    spread: float,
    seed: int,
) -> dict[int, dict[int, str]]:
    """Node id -> {class: reason} for every client class the outlier rule flags (see the module)."""
    if nets < 1 or len(sets) < 2:
        return {}
    means = _class_means(sets, _embedder(spec=spec, model_name=model_name, nets=nets, seed=seed))
    return _judge(sets, means, margin=margin, spread=spread)[1]


def _judge(
    sets: Sequence[ClientSet],
    means: dict[tuple[int, int], torch.Tensor],
    *,
    margin: float,
    spread: float,
    anchors: dict[int, torch.Tensor] | None = None,
) -> tuple[dict[int, int], dict[int, dict[int, str]]]:
    """Node id -> how many of its classes had a reference to judge them, and the flagged classes.

    ``means`` holds (at least) every class mean of ``sets`` (:func:`_class_means`), so that a
    repeated judgement of fewer clients embeds nothing again. ``anchors`` (class -> the server's
    reference mean) replace the other clients' medians: every class the server holds is judged.
    """
    nodes = {s.node_id for s in sets}
    means = {(i, c): m for (i, c), m in means.items() if i in nodes}
    holders: dict[int, list[int]] = {}
    for i, c in means:
        holders.setdefault(c, []).append(i)
    sent = {(s.node_id, c): float((s.synthetic.labels == c).sum()) for s in sets for c in holders}

    def references_without(judged: int) -> dict[int, torch.Tensor]:
        """Class -> weighted median of the other clients' class means (classes only ``judged`` holds have none)."""
        out = {}
        for c, idx in holders.items():
            others = [j for j in idx if j != judged]
            if others:
                out[c] = weighted_median(
                    torch.stack([means[(j, c)] for j in others]),
                    torch.tensor([sent[(j, c)] for j in others], dtype=torch.float64),
                )
        return out

    if anchors is not None:
        references = {i: anchors for i in nodes}
        distance = {
            (i, c): float(torch.linalg.vector_norm(m - anchors[c])) for (i, c), m in means.items() if c in anchors
        }
        # one vote per client: a client's median distance, so that colluders sending many classes
        # that sit on the reference cannot shrink the typical distance the honest clients are held to
        per_client: dict[int, list[float]] = {}
        for (i, _), d in distance.items():
            per_client.setdefault(i, []).append(d)
        typical = [float(torch.tensor(ds).median()) for ds in per_client.values()]
    else:
        references = {i: references_without(i) for i in nodes}
        distance = {
            (i, c): float(torch.linalg.vector_norm(m - references[i][c]))
            for (i, c), m in means.items()
            if _has_majority([sent[(j, c)] for j in holders[c] if j != i], sent[(i, c)])
        }
        typical = [distance[(i, c)] for (i, c) in distance if len(holders[c]) >= _SPREAD_MIN_HOLDERS]
    scale = float(torch.tensor(typical).median()) if typical else None
    flagged: dict[int, dict[int, str]] = {}
    for (i, c), own in distance.items():
        m = means[(i, c)]
        others = {o: float(torch.linalg.vector_norm(m - p)) for o, p in references[i].items() if o != c}
        nearest = min(others, key=others.get) if others else None
        reason = None
        if nearest is not None and others[nearest] * margin < own:
            reason = f"class {c} images embed nearer class {nearest}'s reference ({others[nearest]:.3g} vs {own:.3g})"
        elif scale is not None and scale > 0 and own > spread * scale:
            reason = f"class {c} images lie {own / scale:.1f}x the typical distance from the class reference"
        if reason is not None:
            flagged.setdefault(i, {})[c] = reason
    judged = {i: 0 for i in nodes}
    for i, _ in distance:
        judged[i] += 1
    return judged, flagged


def _without_classes(client_set: ClientSet, classes: Sequence[int]) -> ClientSet:
    synthetic = client_set.synthetic
    keep = ~torch.isin(synthetic.labels, torch.tensor(list(classes), dtype=synthetic.labels.dtype))
    counts = client_set.class_counts.clone()
    counts[list(classes)] = 0
    return dataclasses.replace(
        client_set,
        synthetic=SyntheticSet(synthetic.images[keep], synthetic.labels[keep], dict(synthetic.meta)),
        class_counts=counts,
    )


def robust_sets(
    sets: Sequence[ClientSet],
    *,
    spec: DatasetSpec,
    config: RobustConfig,
    model_name: str,
    seed: int,
    ipc: int,
    reference: ServerReference | None = None,
) -> RobustOutcome:
    """Apply the robust rule to validated client sets (a no-op copy when ``config.enabled`` is off).

    Parameters
    ----------
    sets : Sequence[ClientSet]
        The sets the union would hold.
    spec : DatasetSpec
        The dataset (the embedding networks' input).
    config : RobustConfig
        ``count_cap_factor``, ``outlier_nets``, ``outlier_margin``, ``outlier_spread``.
    model_name : str
        Architecture of the random embedding networks (the job's model).
    seed : int
        Seeds the embedding networks.
    ipc : int
        The images per class the job asked for (:func:`bound_claims_by_images`).
    reference : ServerReference | None
        The server's own labelled images (``robust.reference_per_class`` per class,
        :func:`server_reference`); required when that key is above 0.

    Raises
    ------
    ValueError
        When the config asks for a server reference and none is given.
    """
    if not config.enabled:
        return RobustOutcome(list(sets))
    if config.reference_per_class > 0 and reference is None:
        raise ValueError("robust.reference_per_class > 0: the server's reference images must be given")
    # the total first, then each class by its images: a claim moved onto one image stays bounded
    capped, cap_notes = cap_claimed_counts(sets, factor=config.count_cap_factor)
    capped, image_notes = bound_claims_by_images(capped, ipc=ipc)
    neutralised: dict[int, list[str]] = {}
    for notes in (cap_notes, image_notes):
        for node, note in notes.items():
            neutralised.setdefault(node, []).append(note)
    # a rejected client's sets must not shape the references that judge the others: reject the
    # most flagged client only, judge the rest again without it, and repeat (one pass per rejection)
    rejected: dict[int, str] = {}
    remaining = list(capped)
    judging = config.outlier_nets >= 1 and len(remaining) >= 2
    means, anchors = {}, None
    if judging:
        embed = _embedder(spec=spec, model_name=model_name, nets=config.outlier_nets, seed=seed)
        means = _class_means(remaining, embed)
        if config.reference_per_class > 0:
            assert reference is not None
            anchors = _reference_means(reference, embed)
    while True:
        judged, flagged = (
            _judge(remaining, means, margin=config.outlier_margin, spread=config.outlier_spread, anchors=anchors)
            if judging
            else ({}, {})
        )
        over_half = {}
        for s in remaining:
            classes = flagged.get(s.node_id, {})
            if classes and 2 * len(classes) > judged[s.node_id]:
                over_half[s.node_id] = (len(classes), len(classes) / judged[s.node_id], judged[s.node_id], classes)
        if not over_half:
            break
        # the verdicts hold only while most clients are honest (the references, or with a server
        # reference the typical distance, come from the clients): a rule that would reject half of
        # them or more, or every remaining set, contradicts its premise and fails closed
        outvoted = 2 * (len(rejected) + 1) >= len(capped)
        if len(over_half) == len(remaining) or outvoted:
            alarm = _contradiction(len(capped), rejected, over_half, every=len(over_half) == len(remaining))
            logger.error("the robust rule raised an alarm: %s", alarm)
            return RobustOutcome([], {}, neutralised, alarm=alarm)
        # most evidence first: the most flagged classes, then the largest flagged share
        worst = max(over_half, key=lambda node: over_half[node][:2])
        count, _, held, classes = over_half[worst]
        rejected[worst] = f"outlier on {count} of {held} judged classes: " + "; ".join(classes.values())
        remaining = [s for s in remaining if s.node_id != worst]
    kept = []
    for s in remaining:
        classes = flagged.get(s.node_id)
        if not classes:
            kept.append(s)
            continue
        kept.append(_without_classes(s, sorted(classes)))
        neutralised.setdefault(s.node_id, []).extend(f"removed: {reason}" for reason in classes.values())
    return RobustOutcome(kept, rejected, neutralised)


def _contradiction(clients: int, rejected: dict[int, str], over_half: dict[int, tuple], *, every: bool) -> str:
    """The alarm's text: how the verdicts contradict an honest majority of ``clients``."""
    if every:
        verdict = f"every one of the {len(over_half)} remaining client sets is an outlier on most of its judged classes"
    else:
        verdict = f"it would reject {len(rejected) + 1} or more of the {clients} client sets"
    before = f"nodes {', '.join(map(str, rejected))} rejected before" if rejected else "none rejected before"
    return (
        f"{verdict} ({before}); the rule assumes most clients are honest, so its "
        "references cannot be trusted: no set is aggregated this round (clients that disagree about what "
        "the classes look like, e.g. colluding label flippers or a wrong class order on some clients)"
    )
