"""``planning``: a goal with constraints; each question asks for a short plan of one
sub-task. There is no gold answer, so only speed and format can be compared."""

from __future__ import annotations

import random
from dataclasses import dataclass

from paralleldecode.data.records import QuestionGroup
from paralleldecode.data.tasks.common import (
    DEFAULT_COUNT,
    PLANNING,
    TOWNS,
    VOCABULARY,
    Built,
    check_size,
    generate,
)


@dataclass(frozen=True)
class _Goal:
    """One planning goal.

    Text may use the slots ``place``, ``budget``, ``people``, ``weeks`` and ``date``, which
    are drawn per group so that groups sharing a goal still differ in their constraints.

    Attributes:
        goal: one sentence stating the goal.
        constraints: one sentence each, listed under the goal.
        subtasks: independent parts of the goal, 3 to 5 of them.
        budget: range of the budget in euros (drawn in steps of 50).
    """

    goal: str
    constraints: tuple[str, ...]
    subtasks: tuple[str, ...]
    budget: range


_GOALS = (
    _Goal("Organise a one-day book fair in the village hall of {place}.",
          ("The total budget is {budget} euros.",
           "The fair is on {date}; the hall is free from 8:00 that morning.",
           "{people} volunteers can help, none of them for more than four hours."),
          ("find and confirm at least ten book sellers", "plan the layout of stalls in the hall",
           "advertise the fair in and around {place}", "set up a children's reading corner",
           "clear and clean the hall after the fair"),
          range(800, 3000, 50)),
    _Goal("Move a six-person biology lab from the old science block to a new building in "
          "{place}.",
          ("The move must be finished within {weeks} weeks.",
           "Moving costs may not exceed {budget} euros.",
           "{people} lab members can help; freezers may be off for at most two hours."),
          ("pack and label the glassware and small instruments",
           "move the freezers and their samples without breaking the cold chain",
           "set up the computers and the network in the new rooms",
           "tell suppliers and collaborators the new delivery address"),
          range(2000, 9000, 50)),
    _Goal("Run a weekend coding workshop for teenagers at the library in {place}.",
          ("The workshop starts on {date} and lasts two days.",
           "The budget, including snacks, is {budget} euros.",
           "{people} mentors are available; at most 24 participants fit in the room."),
          ("choose a beginner-friendly project to build over the weekend",
           "prepare laptops and install the software",
           "plan the schedule of both days", "handle sign-ups and parental consent forms",
           "collect feedback from participants at the end"),
          range(300, 1500, 50)),
    _Goal("Turn an empty lot in {place} into a community garden.",
          ("Planting must start in {weeks} weeks.",
           "The neighbourhood fund gives {budget} euros.",
           "{people} neighbours have offered a few hours each weekend."),
          ("test and prepare the soil", "decide which vegetables and flowers to grow",
           "build raised beds and a compost corner", "set up a watering rota for the summer"),
          range(500, 2500, 50)),
    _Goal("Plan a family reunion for 40 relatives in {place}.",
          ("The reunion is on {date}.", "The family has pooled {budget} euros.",
           "{people} relatives have agreed to help organise."),
          ("book a venue that suits both young children and older guests",
           "plan the meals, including vegetarian options",
           "arrange places to stay for relatives travelling from far away",
           "plan activities for the afternoon"),
          range(1500, 6000, 50)),
    _Goal("Launch a small online shop for handmade candles made in {place}.",
          ("The shop must open within {weeks} weeks.",
           "{budget} euros are available for setup and the first stock.",
           "The team is {people} people, all working part time."),
          ("photograph the candles and write product descriptions",
           "choose a shop platform and set up payments",
           "work out shipping costs and packaging", "plan the launch announcement"),
          range(600, 4000, 50)),
    _Goal("Renovate a rented one-room office in {place}.",
          ("The works must be done within {weeks} weeks.", "The budget is {budget} euros.",
           "{people} staff must keep working while the room is closed.",
           "The landlord must approve any change to walls or wiring."),
          ("repaint the walls and ceiling", "replace the lighting",
           "buy and assemble new furniture",
           "arrange where staff work while the room is closed"),
          range(2500, 12000, 50)),
    _Goal("Hold a charity 5 km run through the streets of {place}.",
          ("The run is on {date}.", "Costs must stay under {budget} euros.",
           "{people} volunteers are available on the day."),
          ("get permission to close the route", "mark the course and set up a water station",
           "register runners and collect donations", "arrange first aid along the route",
           "prepare medals and publish the results"),
          range(700, 3500, 50)),
    _Goal("Digitise the photograph collection of the small town archive in {place}.",
          ("The project has {weeks} weeks.", "A grant of {budget} euros covers all costs.",
           "{people} volunteers can work two afternoons a week."),
          ("sort and number the prints", "choose a scanner and a file format",
           "write a short description for every photograph",
           "publish the collection online"),
          range(1000, 7000, 50)),
    _Goal("Organise the science fair of the secondary school in {place}.",
          ("The fair is on {date}.", "The school has set aside {budget} euros.",
           "{people} teachers can help; pupils build their own stands."),
          ("invite judges from outside the school", "plan the layout of stands in the gym",
           "write the judging criteria", "arrange prizes for each age group"),
          range(400, 2000, 50)),
)
MAX_SUBTASKS = max(len(goal.subtasks) for goal in _GOALS)
_MONTHS = VOCABULARY["months"]


def generate_planning(count: int = DEFAULT_COUNT, seed: int = 0, *,
                      subtasks: int | None = None) -> list[QuestionGroup]:
    """Generates planning groups: one goal with constraints, one question per sub-task.

    The background states the goal and its constraints (budget, a date or deadline, the
    people available). Each question is ``Write a short plan for the sub-task: <sub-task>``.
    Questions have no gold answers. Goals are used in a seeded order that runs through all of
    them before any repeats; the town, budget, date and headcount are drawn per group.
    ``group.metadata`` keeps the goal and the drawn values.

    Args:
        count: number of groups.
        seed: same seed, same groups.
        subtasks: sub-tasks per group; None asks every sub-task of the goal (3 to 5). A number
            picks that many and uses only goals that have enough.

    Returns:
        Groups with ids ``planning/0000``, ... and question ids ``planning/0000/q1``, ...

    Raises:
        DataError: a size is out of range.
    """
    if subtasks is not None:
        check_size("subtasks", subtasks, 1, MAX_SUBTASKS)
    goals = [g for g in _GOALS if subtasks is None or len(g.subtasks) >= subtasks]
    # One order per seed (not per group) so that consecutive groups cycle through the goals.
    order = random.Random(f"{PLANNING}:{seed}:order").sample(goals, len(goals))
    return generate(PLANNING, count, seed,
                     lambda rng, index: _planning_group(rng, order[index % len(order)], subtasks),
                     {"subtasks": subtasks})


def _planning_group(rng: random.Random, goal: _Goal, n_subtasks: int | None) -> Built:
    values = {"place": rng.choice(TOWNS), "budget": rng.choice(goal.budget),
              "people": rng.randint(3, 12), "weeks": rng.randint(3, 10),
              "date": f"{rng.randint(1, 28)} {rng.choice(_MONTHS)}"}
    picked = sorted(rng.sample(range(len(goal.subtasks)), n_subtasks or len(goal.subtasks)))
    tasks = [goal.subtasks[i].format(**values) for i in picked]
    constraints = [c.format(**values) for c in goal.constraints]
    background = (f"Goal: {goal.goal.format(**values)}\nConstraints:\n"
                  + "\n".join(f"- {c}" for c in constraints))
    drafts = [(f"Write a short plan for the sub-task: {task}", [], {"subtask": task})
              for task in tasks]
    return background, drafts, {"goal": goal.goal.format(**values), "values": values}
