"""The fault tour: one test item per case (`-k NAME` runs one); see `tour.py` for the categories.

Run it with `make test-all`, or `.venv/bin/python -m pytest -m acceptance tests/acceptance`.

Cases dropped because a unit test checks the same command, fault and property (case -> test):

- sigterm_pause_before_finish -> tests/training/test_faults_train.py::
      test_signal_during_the_final_save_leaves_a_finished_run (its `finished_run` fixture
      signals in the same BNN_TEST_PAUSE_BEFORE_FINISH pause) and
      test_resume_of_a_finished_run_changes_nothing_even_without_status
- resume_finished_status_deleted -> tests/training/test_faults_train.py::
      test_resume_of_a_finished_run_changes_nothing_even_without_status
- convert_run_onto_its_model -> tests/convert/test_faults_convert.py::
      test_convert_onto_its_own_input_is_refused
- convert_onto_run_config -> tests/convert/test_faults_convert.py::
      test_convert_onto_its_own_input_is_refused
- convert_readonly_output -> tests/convert/test_faults_convert.py::
      test_read_only_file_system_is_refused_before_converting
- convert_bundle_on_readonly -> tests/convert/test_faults_convert.py::
      test_read_only_file_system_is_refused_before_converting
- convert_class_names_mismatch -> tests/convert/test_faults_convert.py::
      test_class_names_must_match_the_outputs
- convert_bare_model_file -> tests/convert/test_faults_convert.py::
      test_model_file_needs_its_preprocessing_or_no_metadata
- benchmark_float_tflite_label -> tests/convert/test_faults_convert.py::
      test_benchmark_labels_float_and_binary_models
- benchmark_threads_100000, benchmark_threads_0, evaluate_threads_100000, evaluate_threads_0
      -> tests/convert/test_faults_convert.py::test_threads_are_bounded_by_the_cpus
- models_num_classes_0, summary_num_classes_0, inspect_num_classes_0 -> tests/cli/
      test_faults_messages.py::test_zero_classes_names_the_option (click's range check
      runs before any model is built, so the model name does not matter)
- train_model_option_broken_json -> tests/cli/test_faults_messages.py::
      test_broken_json_model_option_gives_the_json_error
- train_model_option_wrong_type -> tests/cli/test_faults_messages.py::
      test_model_option_of_the_wrong_type_is_a_user_error
- import_tensorflow_first -> tests/cli/test_faults_messages.py::
      test_tensorflow_imported_first_then_bnn_keras_works
- import_keras3_bound_first -> tests/cli/test_faults_messages.py::
      test_keras3_already_in_use_gives_our_error_not_larqs
"""

import pytest

from tests.acceptance.tour import PASSING, Case, Tour, build_cases, execute

# Every item is an acceptance item (`-m "not acceptance"` leaves them out). `func_only`: the
# first item also makes the session's fixtures (minutes of training and converting, each child
# under its own timeout); setup.cfg's per-test timeout is for the case itself.
pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(func_only=True)]


def _param(case: Case):
    """One item per case, with more time than setup.cfg's default when the case needs it."""
    marks = [pytest.mark.timeout(case.max_seconds, func_only=True)] if case.max_seconds else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in build_cases()])
def test_fault_case(tour: Tour, case: Case):
    outcome = execute(tour, case)
    if outcome.category == "skipped":
        pytest.skip(outcome.note)
    assert outcome.category in PASSING, (
        f"{outcome.category}: {outcome.note}\n"
        f"  command: {outcome.command} (rc {outcome.rc}, {outcome.seconds:.1f} s)\n"
        f"  stderr: {outcome.first_stderr}")
