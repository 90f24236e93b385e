"""The Launch screen: a matrix of runs — dataset, recipe, model, epochs, folds × seeds × λ, GPUs per run —
filled from the paper's recipe, previewed live (cells to add, cells skipped because their experiment
already has a run, the GPU plan, what in the config will keep runs from learning, and how long the study
trains at the speed past runs measured) and queued after a confirmation through `fmae.queue_ops`, the
code path of `fmae queue add`. The last plan is remembered (fmae_tui/prefs.py, section "launch")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.widgets import Footer, Header, Input, Select, Static

from fmae.errors import FmaeError
from fmae.model_specs import ENCODERS
from fmae.registry import DATASETS, get_dataset
from fmae_tui import prefs
from fmae_tui.screens.base import FmaeScreen, WorkEnded
from fmae_tui.screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from fmae.queue_ops import MatrixPlan
    from fmae.run_speed import Estimate

PREVIEW_DELAY_S = 0.3  # typing pauses this long before the plan is worked out again
MAX_LISTED = 40  # cells listed one by one in the preview
PREFS = "launch"
# id_head_depth: 1 = linear (the paper's), 2 or 3 = an MLP of that many layers (the paper's ablation)
ID_HEADS = [("linear", "1"), ("2-layer MLP", "2"), ("3-layer MLP", "3")]
FIELDS = ("model", "epochs", "folds", "seeds", "lambdas", "id_head", "gpus", "priority")  # remembered beside dataset, recipe


class LaunchScreen(FmaeScreen):
    SUB_TITLE = "Launch"
    BINDINGS = [
        Binding("ctrl+s", "queue", "Queue it", tooltip="Queue the cells to add (asks first); the scheduler starts"),
        Binding("ctrl+r", "paper_recipe", "Paper's recipe",
                tooltip="Select the paper's recipe (fmae.toml's default) and fill every field from it again"),
        Binding("ctrl+t", "try_it", "Try it", tooltip="One small run to see the whole path: the demo recipe "
                "(vit_tiny, no warmup), first fold, first seed (minutes on a CPU)"),
    ]

    def __init__(self, dataset: str | None = None) -> None:
        super().__init__()
        self._saved = prefs.load(PREFS)
        if dataset is None and self._saved.get("dataset") in DATASETS:
            dataset = str(self._saved["dataset"])
        self._dataset = get_dataset(dataset).name if dataset else "bp4d"
        self._filling = False
        self._filled_from: str | None = None  # the recipe the fields were last filled from
        self._timer: Any = None
        self.plan: MatrixPlan | None = None  # the latest preview's plan (None while the fields are wrong)
        self.previews = 0  # previews shown so far (tests wait on it)
        self.queued: list[Any] = []  # jobs queued from this screen, latest submission (tests read it)
        self.estimate: Estimate | None = None  # the latest preview's duration estimate
        self.warnings: list[str] = []  # the latest preview's config warnings

    def compose(self) -> ComposeResult:
        from fmae.recipes import recipe_names

        yield Header()
        with Grid(id="launch-form"):
            yield Static("dataset", classes="label")
            yield Select([(f"{s.name} — {s.title}", s.name) for s in DATASETS.values()], value=self._dataset,
                         allow_blank=False, compact=True, id="dataset")
            yield Static("recipe", classes="label")
            yield Select([(n, n) for n in recipe_names(self._dataset)], allow_blank=False, compact=True,
                         id="recipe")
            yield Static("model", classes="label")
            yield Select([(name, name) for name in ENCODERS], allow_blank=False, compact=True, id="model",
                         value="vit_base")
            yield Static("epochs", classes="label")
            yield Input(compact=True, type="integer", id="epochs")
            yield Static("folds", classes="label")
            yield Input(compact=True, id="folds", placeholder="e.g. 1,2,3")
            yield Static("seeds", classes="label")
            yield Input(compact=True, id="seeds", placeholder="e.g. 0,1,2")
            yield Static("λ (IAT)", classes="label")
            yield Input(compact=True, id="lambdas", placeholder="e.g. 0,2")
            yield Static("ID head", classes="label")
            yield Select(ID_HEADS, allow_blank=False, compact=True, id="id_head", value="1",
                         tooltip="IAT's identity head (λ > 0): linear as the paper, or its ablation's MLPs")
            yield Static("GPUs/run", classes="label")
            yield Input(compact=True, type="integer", id="gpus", tooltip="0 = a CPU slot")
            yield Static("priority", classes="label")
            yield Input("0", compact=True, type="integer", id="priority")
            yield Static("")
            yield Static(id="launch-go")
        with VerticalScroll(id="launch-plan"):
            yield Static(id="launch-preview")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#launch-plan").border_title = "Plan"
        self._fill_recipes()
        self.action_fill()
        self._restore()
        self.query_one("#dataset", Select).focus()

    def on_screen_resume(self) -> None:
        self._schedule_preview()  # the skipped cells' runs moved on (queued → running → done) meanwhile

    def _restore(self) -> None:
        """The last plan of this dataset, as the user left it (not the recipe's defaults again)."""
        saved = self._saved
        if saved.get("dataset") != self._dataset:
            return
        with self.prevent(Select.Changed, Input.Changed):  # no re-fill from the recipe while restoring
            from fmae.recipes import recipe_names

            if saved.get("recipe") in recipe_names(self._dataset) and saved["recipe"] != self._value("recipe"):
                self._set("#recipe", str(saved["recipe"]))
                self.action_fill()
            self._filling = True
            for name in FIELDS:
                value = saved.get(name)
                if not isinstance(value, str) or self.query_one(f"#{name}").disabled:
                    continue
                if name == "model" and value not in ENCODERS:
                    continue
                self._set(f"#{name}", value)
            self._filling = False
        self._schedule_preview()

    def _remember(self) -> None:
        values = {"dataset": self._dataset, "recipe": self._value("recipe")}
        values.update({name: self._value(name) or "" for name in FIELDS})
        prefs.save(PREFS, values)

    # --- filling from the recipe ---------------------------------------------------------------------

    def _fill_recipes(self) -> None:
        from fmae.recipes import recipe_names

        names = recipe_names(self._dataset)
        select = self.query_one("#recipe", Select)
        self._filling = True
        select.set_options([(n, n) for n in names])
        select.value = self._paper_recipe()
        self._filling = False

    def _paper_recipe(self) -> str:
        """The recipe a plan starts from: fmae.toml's `[defaults] recipe` where this dataset has it (FER has
        no fmae_iat), else the paper's first; never the demo, which is ctrl+t's."""
        from fmae.recipes import DEMO_RUN, recipe_names

        names = [n for n in recipe_names(self._dataset) if n != DEMO_RUN["recipe"]]
        default = self.fmae.project.defaults.get("recipe")
        return str(default) if default in names else names[0]

    def action_paper_recipe(self) -> None:
        """ctrl+r: back to the paper's recipe, whatever recipe (the demo's, after ctrl+t) is selected."""
        with self.prevent(Select.Changed):  # one fill, below, not a second from the recipe's change
            self._set("#recipe", self._paper_recipe())
        self.action_fill()

    def action_fill(self) -> None:
        """Every field from the paper's recipe (over fmae.toml's defaults), as `fmae train` resolves it."""
        from fmae.queue_ops import default_gpus_per_run
        from fmae.run_config import resolve_run_config

        spec = get_dataset(self._dataset)
        project = self.fmae.project
        seeds = project.defaults.get("seeds") or [0]
        recipe = self._filled_from = self._value("recipe")
        try:
            resolved = resolve_run_config(project, spec.name, recipe=recipe, fold=1 if spec.task == "au" else None,
                                          seed=int(seeds[0]), cli={}, generate=False).values
            gpus = default_gpus_per_run(project)
        except FmaeError as e:
            self._show_error(str(e))
            return
        self._filling = True
        au = spec.task == "au"
        self._set("#model", resolved["model"])
        self._set("#epochs", str(resolved["epochs"]))
        self._set("#folds", ",".join(str(f) for f in range(1, spec.num_folds + 1)) if au else "")
        self._set("#seeds", ",".join(str(s) for s in seeds))
        self._set("#lambdas", f"{float(resolved['lambda_id']):g}" if au else "")
        self._set("#id_head", str(resolved.get("id_head_depth", 1)))
        self.query_one("#id_head", Select).disabled = not au
        self._set("#gpus", str(gpus))
        for name in ("#folds", "#lambdas"):
            widget = self.query_one(name, Input)
            widget.disabled = not au
            widget.placeholder = "" if au else f"({spec.name}: one split, no λ)"
        self._filling = False
        self._schedule_preview()

    def action_try_it(self) -> None:
        """The smallest meaningful run: what a newcomer launches first (the engine's demo plan, the
        README's first `fmae train`)."""
        from fmae.recipes import DEMO_RUN, finetune_recipe

        au = get_dataset(self._dataset).task == "au"
        self._filling = True
        with self.prevent(Select.Changed):  # a recipe change refills every field from that recipe
            self._set("#recipe", DEMO_RUN["recipe"])
        self._filled_from = DEMO_RUN["recipe"]
        self._set("#model", DEMO_RUN["model"])
        self._set("#epochs", str(finetune_recipe(self._dataset, DEMO_RUN["recipe"])["epochs"]))
        self._set("#seeds", str(DEMO_RUN["seed"]))
        if au:
            self._set("#folds", str(DEMO_RUN["fold"]))
            self._set("#lambdas", f"{DEMO_RUN['lambda_id']:g}")
        self._filling = False
        self._schedule_preview()

    def _set(self, selector: str, value: str) -> None:
        widget = self.query_one(selector)
        if isinstance(widget, Select):
            widget.value = value
        else:
            cast(Input, widget).value = value

    def _value(self, name: str) -> Optional[str]:
        widget = self.query_one(f"#{name}")
        if isinstance(widget, Select):
            return None if widget.is_blank() else str(widget.value)
        text = cast(Input, widget).value.strip()
        return text or None

    def on_select_changed(self, event: Select.Changed) -> None:
        if self._filling or not self.is_mounted:
            return
        if event.select.id == "dataset" and not event.select.is_blank() and event.value != self._dataset:
            self._dataset = str(event.value)
            self._fill_recipes()
            self.action_fill()
        elif event.select.id == "recipe" and self._value("recipe") != self._filled_from:
            # the select's value now, not the event's: mount's Changed arrives after the plan is restored
            self.action_fill()
        else:
            self._schedule_preview()

    def on_input_changed(self, event: Input.Changed) -> None:
        if not self._filling:
            self._schedule_preview()

    # --- the preview -----------------------------------------------------------------------------------

    def matrix(self) -> dict[str, Any]:
        """The fields as `fmae.queue_ops.plan_matrix` options; FmaeError naming the field that is wrong."""
        from fmae.queue_ops import parse_floats, parse_ints

        au = get_dataset(self._dataset).task == "au"
        cli: dict[str, Any] = {}
        if self._value("model"):
            cli["model"] = self._value("model")
        epochs = parse_ints(self._value("epochs"), "epochs")
        if epochs:
            if len(epochs) != 1 or epochs[0] < 1:
                raise FmaeError("epochs: give one whole number, at least 1")
            cli["epochs"] = epochs[0]
        if au and self._value("id_head"):
            cli["id_head_depth"] = int(str(self._value("id_head")))
        gpus = parse_ints(self._value("gpus"), "GPUs/run")
        if gpus and len(gpus) != 1:
            raise FmaeError("GPUs/run: give one whole number (0 = a CPU slot)")
        return dict(dataset=self._dataset, recipe=self._value("recipe"), cli=cli,
                    folds=parse_ints(self._value("folds"), "folds") if au else None,
                    seeds=parse_ints(self._value("seeds"), "seeds"),
                    lambdas=parse_floats(self._value("lambdas"), "λ") if au else None,
                    gpus_per_run=gpus[0] if gpus else None)

    def priority(self) -> int:
        from fmae.queue_ops import parse_ints

        value = parse_ints(self._value("priority") or "0", "priority") or [0]
        if len(value) != 1:
            raise FmaeError("priority: give one whole number")
        return value[0]

    def _schedule_preview(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(PREVIEW_DELAY_S, self._preview)

    def _preview(self) -> None:
        self._timer = None
        self.plan = None
        try:
            matrix = self.matrix()
            self.priority()
        except FmaeError as e:
            self._show_error(str(e))
            return
        self._plan_worker(matrix)

    class Planned(WorkEnded):
        """A preview's plan was worked out: `result` is (plan, duration estimate, config warnings)."""

    def _plan_worker(self, matrix: dict[str, Any]) -> None:
        # exclusive: a newer preview cancels this one, which then says nothing
        self.in_thread(lambda: self._plan(matrix), self.Planned, group="launch-plan", exclusive=True)

    def _plan(self, matrix: dict[str, Any]) -> tuple[MatrixPlan, Estimate | None, list[str]]:
        from fmae.queue_ops import plan_matrix

        plan = plan_matrix(self.fmae.project, **matrix)  # reads run folders: not on the UI thread
        return (plan, *self._judge(plan))

    def on_launch_screen_planned(self, message: Planned) -> None:
        plan, estimate, warnings = message.result or (None, None, [])
        self._show_plan(plan, message.error, estimate, warnings)

    def _judge(self, plan: MatrixPlan) -> tuple[Estimate | None, list[str]]:
        """How long the cells to add train (at the speed past runs measured on the device they will use),
        and what in their config will keep them from learning (fmae.run_config.config_warnings)."""
        from fmae.run_config import config_warnings
        from fmae.run_speed import estimate, train_images

        cells = [c.values for c in plan.to_add]
        if not cells:
            return None, []
        project = self.fmae.project
        device = "cpu" if plan.gpus_per_run == 0 or project.device == "cpu" else "cuda"
        found = estimate(project.runs_dir, cells, device)
        first = cells[0]
        images = train_images(first)
        step = int(first["batch_size"]) * int(first.get("accum_iter") or 1)
        return found, config_warnings(first, images // step if images else None)

    def _show_plan(self, plan: MatrixPlan | None, error: str | None, estimate: Estimate | None = None,
                   warnings: list[str] | None = None) -> None:
        if error is not None or plan is None:
            self._show_error(error or "no plan")
            return
        from fmae.queue_ops import cell_label

        self.plan, self.estimate, self.warnings = plan, estimate, list(warnings or [])
        self._remember()
        text = Text()
        lines = plan.summary()
        text.append(lines[0] + "\n", "bold")
        for warning in self.warnings:
            text.append(f"warning: {warning}\n", "bold yellow")
        if estimate is not None:
            text.append(f"time: {estimate.text()}\n")
        for line in lines[1:]:
            text.append(line + "\n", "dim" if line.startswith("skip ") else "")
        for cell in plan.to_add[:MAX_LISTED]:
            text.append(f"add {cell_label(cell.values)}\n")
        if len(plan.to_add) > MAX_LISTED:
            text.append(f"… and {len(plan.to_add) - MAX_LISTED} more\n")
        if plan.to_add:
            values = plan.to_add[0].values
            depth = values.get("id_head_depth", 1)
            head = f", ID head {dict((v, k) for k, v in ID_HEADS)[str(depth)]}" if depth != 1 else ""
            text.append(f"each: {values['model']}, {values['epochs']} epochs, batch {values['batch_size']}, "
                        f"blr {values['blr']:g}, recipe {values['recipe']}{head}; data {values.get('data_root')}\n",
                        "dim")
        self.query_one("#launch-preview", Static).update(text)
        n = len(plan.to_add)
        self._go(f"ctrl+s: queue {n} run{'' if n == 1 else 's'}" if n else "nothing to add")
        self.previews += 1

    def _show_error(self, message: str) -> None:
        self.plan = None
        self.query_one("#launch-preview", Static).update(Text(message, "bold red"))
        self._go("fix the fields to queue")
        self.previews += 1

    def _go(self, text: str) -> None:
        self.query_one("#launch-go", Static).update(Text(text, "bold"))

    # --- queueing --------------------------------------------------------------------------------------

    def action_queue(self) -> None:
        if self._timer is not None:  # fields changed since the last preview: work it out first
            self.notify("the plan is being worked out: press again in a moment", severity="warning")
            return
        plan = self.plan
        if plan is None:
            self.notify("fix the fields first (the plan says what is wrong)", severity="error")
            return
        if not plan.to_add:
            self.notify("nothing to add: every cell already has a run", severity="warning")
            return
        try:
            matrix, priority = self.matrix(), self.priority()
        except FmaeError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        n = len(plan.to_add)
        question = f"Queue {n} run{'' if n == 1 else 's'} of {plan.dataset}?"
        detail = "\n".join([plan.summary()[0], plan.plan, f"priority {priority}"])
        self.app.push_screen(ConfirmScreen(question, detail),
                             lambda yes: self._submit(matrix, priority) if yes else None)

    def _submit(self, matrix: dict[str, Any], priority: int) -> None:
        self._go("queueing…")
        self.fmae.generating.add(matrix["dataset"])  # synthetic data may be made on first use
        self._add_worker(matrix, priority)

    class Added(WorkEnded):
        """Queueing the matrix ended: `result` is (jobs added, what was said); `context` the dataset."""

    def _add_worker(self, matrix: dict[str, Any], priority: int) -> None:
        app, project = self.fmae, self.fmae.project  # the user may leave this screen while data is made

        def left(result: Any, error: str | None) -> None:
            app.generating.discard(matrix["dataset"])
            app.notify(error or "; ".join((result or ([], []))[1]), title="launch" if error is None else "not queued",
                       severity="error" if error else "information", markup=False, timeout=10 if error else 5)

        self.in_thread(lambda: _add(project, matrix, priority), self.Added, group="launch-add",
                       context=matrix["dataset"], left=left)

    def on_launch_screen_added(self, message: Added) -> None:
        jobs, lines = message.result or ([], [])
        self.fmae.generating.discard(message.context)
        self.queued = jobs
        worked = self.tell(message.error, lines, "launch", failed="not queued")
        self._schedule_preview()  # the cells just added now show as skipped
        if worked and jobs:
            self.fmae.action_open("queue")


def _add(project: Any, matrix: dict[str, Any], priority: int) -> tuple[list[Any], list[str]]:
    """Queue the matrix's cells (making synthetic data first if needed) and start the scheduler."""
    from fmae.queue_ops import add_matrix, start_scheduler

    _, jobs = add_matrix(project, priority=priority, **matrix)
    if not jobs:
        return jobs, ["nothing added: every cell already has a run"]
    return jobs, [f"queued {len(jobs)} job(s) (ids {jobs[0].id}–{jobs[-1].id}, priority {priority})",
                  start_scheduler(project)]
