"""A function in the Runner form: the gateway calls Runner().run(arguments)."""

from qiskit_serverless import get_logger


class Runner:
    def run(self, arguments: dict) -> dict:
        get_logger().info("runner got %s", sorted(arguments))
        values = arguments.get("values", [])
        return {"total": sum(values), "count": len(values)}
