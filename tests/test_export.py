"""A program exported with an alias keeps the alias, so it loads wherever the alias is registered
(not only where groups were created in the same order)."""

from helpers.group_workers import export_with_alias, load_with_alias

from compile_ops.testing.pool import WorkerPool


def test_exported_program_keeps_the_alias_and_loads_in_a_fresh_world(world, tmp_path):
    exported = world(2).run(export_with_alias, str(tmp_path))
    fresh = WorkerPool(2).start()  # new processes, a new world
    try:
        loaded = fresh.run(load_with_alias, str(tmp_path))
    finally:
        fresh.close()
    for rank in range(2):
        tp_name_then, names_in_graph, results_then = exported[rank]
        tp_name_now, unregistered, results_now = loaded[rank]
        assert names_in_graph == {"tp"}, f"rank {rank}: {names_in_graph}"
        assert tp_name_then != tp_name_now  # the groups were created in another order
        assert results_then == results_now == [[6.0, 6.0], [1.0, 1.0, 2.0, 2.0]]
        assert unregistered[0] == "GroupError" and "'tp'" in unregistered[1]
