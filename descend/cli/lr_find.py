"""``descend lr-find``: the learning-rate range test on a bundled task or the user's data."""

from __future__ import annotations

import click

from descend.cli.options import (FIGURE_SUFFIXES, batch_stream, check_out_file, data_options, hyperparameters_from_sets,
                                 load_data, model_options, optimizer_names, optimizers_help, parse_hidden, write_figure,
                                 tasks_help)

__all__ = ["lr_find_command"]



@click.command("lr-find", epilog="\n\n".join([optimizers_help(), tasks_help()]))
@data_options
@model_options
@click.option("--optimizer", default="adam", show_default=True, help="One optimizer name (listed below).")
@click.option("--set", "sets", multiple=True, metavar="HP=VALUE",
              help="Another hyperparameter of the optimizer, e.g. --set momentum=0.95 (repeatable); not lr, "
                   "which the test sweeps from --start-lr to --end-lr.")
@click.option("--start-lr", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True)
@click.option("--end-lr", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@click.option("--num-steps", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--rule", type=click.Choice(["min10", "steepest"]), default="min10", show_default=True,
              help="min10: the lr at the smoothed loss's minimum ÷ 10; steepest: where it falls fastest.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Save the loss-vs-lr plot here (.png).")
def lr_find_command(task, data_file, target, kind, val_fraction, subsample, features, drop, model, optimizer, sets, start_lr,
                    end_lr, num_steps, batch_size, hidden, rule, seed, out_file):
    """The learning-rate range test: print the suggested lr for OPTIMIZER on a task, plot the sweep.

    Trains the lab's MLP for up to NUM_STEPS mini-batches while the lr grows exponentially from
    START_LR to END_LR, smooths the loss and suggests an lr (see descend.lr_find).

    \b
    Example:
      descend lr-find --task digits --optimizer adam --out lr.png
    """
    import torch

    import descend
    from descend.lab import train

    if end_lr <= start_lr:
        raise click.BadParameter(f"{end_lr} must be larger than --start-lr {start_lr}", param_hint="--end-lr")
    name = optimizer_names(optimizer)[0] if "," not in optimizer else None
    if name is None:
        raise click.BadParameter("give one optimizer", param_hint="--optimizer")
    if out_file:
        check_out_file(out_file, suffixes=FIGURE_SUFFIXES)  # before the sweep: a bad --out must cost nothing
    hp = hyperparameters_from_sets(sets, [name], hint="--set")[name]
    if "lr" in hp:
        raise click.BadParameter(f"lr={hp['lr']!r}: lr-find sweeps the learning rate from --start-lr to --end-lr; "
                                 "set those instead", param_hint="--set")
    widths = parse_hidden(hidden) or train.DEFAULT_HIDDEN[model]
    hyper = train.hyperparameters_for(name, hp)
    try:  # the same check, and the same messages, as descend compare
        train.check_optimizer(name, hyper)
    except (ValueError, TypeError) as e:
        raise click.ClickException(str(e)) from None
    data = load_data(task, data_file, target, kind, val_fraction, subsample, features, drop)
    try:
        train.check_memory(data, widths, batch_size, model)
    except ValueError as e:
        raise click.BadParameter(str(e).replace("hidden widths", "--hidden widths"), param_hint="--hidden") from None
    net = train.make_model(data.n_features, data.n_outputs, widths, seed, model)
    opt = descend.create(name, net.parameters(), **hyper)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    batches = batch_stream(len(x), batch_size, seed)
    loss_of = train._loss_fn(data.kind)

    def loss_fn():
        idx = next(batches)
        return loss_of(net(x[idx]), y[idx])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: one thread is as fast, and robust on a busy machine
    try:
        res = descend.lr_find(net, opt, loss_fn, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, rule=rule)
    finally:
        torch.set_num_threads(threads)
    for note in res.notes:
        click.echo(note, err=True)
    if out_file:
        def draw():
            fig = res.plot()
            fig.axes[0].set_title(f"{data.name}, {name}: {res}", fontsize=9)
            return fig

        write_figure(out_file, draw)
        click.echo(f"wrote {out_file}", err=True)
    if res.suggestion is None:
        raise click.ClickException(f"no suggestion for {name} on {data.name}: " + "; ".join(res.notes))
    click.echo(f"suggested lr for {name} on {data.name}: {res.suggestion:.3g} (rule: {res.rule})")
