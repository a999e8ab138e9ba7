"""A function that needs a package qlayer's environment lacks: QiskitFunction(dependencies=)."""

import pendulum
from qiskit_serverless import get_arguments, save_result

arguments = get_arguments()
day = pendulum.parse(arguments["day"]).add(months=1)
save_result(
    {"day": day.to_date_string(), "version": pendulum.__version__, "file": pendulum.__file__}
)
