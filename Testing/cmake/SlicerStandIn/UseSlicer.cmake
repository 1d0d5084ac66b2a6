# Stand-in for Slicer's UseSlicer.cmake: checks the extension metadata and defines the commands
# a scripted-module extension calls (slicerMacroBuildScriptedModule, slicer_add_python_unittest).

include_guard(GLOBAL)

if(NOT DEFINED EXTENSION_NAME)
  set(EXTENSION_NAME "${PROJECT_NAME}")
endif()

# The Extensions Index reads these from the top-level CMakeLists.txt; all must be set before
# include(${Slicer_USE_FILE}).
foreach(_var IN ITEMS
    EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
    EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if("${${_var}}" STREQUAL "")
    message(FATAL_ERROR "${_var} is not set: set it in the top-level CMakeLists.txt before include(\${Slicer_USE_FILE}).")
  endif()
endforeach()
# ExtensionsIndex rule: the extension name must not start with "Slicer" (the repository name should).
if(EXTENSION_NAME MATCHES "^Slicer")
  message(FATAL_ERROR "Extension name '${EXTENSION_NAME}' must not start with 'Slicer'.")
endif()

include(CTest)  # BUILD_TESTING, enable_testing()
find_package(Python3 COMPONENTS Interpreter QUIET)

# Absolute path of a listed file; stops with the message Slicer gives when the file is missing.
function(_slicer_standin_existing_file out_var kind file)
  if(IS_ABSOLUTE "${file}")
    set(_path "${file}")
  else()
    set(_path "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
  endif()
  if(NOT EXISTS "${_path}")
    message(FATAL_ERROR "slicerMacroBuildScriptedModule(${kind}) given nonexistent file or directory '${file}'")
  endif()
  set(${out_var} "${_path}" PARENT_SCOPE)
endfunction()

# slicerMacroBuildScriptedModule(NAME <name> SCRIPTS <files...> [RESOURCES <files...>]
#                                [TARGET_NAME <target>] [WITH_GENERIC_TESTS] [WITH_SUBDIR] [VERBOSE])
# Copies every script and resource into <build>/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/<path relative to
# the module folder> (a target built by default) and installs it to the same place under the prefix.
# Scripts listed without ".py" get it appended, as in Slicer.
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME;TARGET_NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: unknown arguments: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT MY_SLICER_NAME)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: NAME is mandatory")
  endif()
  if(NOT MY_SLICER_SCRIPTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: SCRIPTS is mandatory")
  endif()
  if(NOT MY_SLICER_TARGET_NAME)
    set(MY_SLICER_TARGET_NAME "${MY_SLICER_NAME}")
  endif()

  set(_scripts)
  foreach(_script IN LISTS MY_SLICER_SCRIPTS)
    if(NOT _script MATCHES "\\.py$")
      set(_script "${_script}.py")
    endif()
    list(APPEND _scripts "${_script}")
  endforeach()

  set(_destination "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  set(_outputs)
  set(_built_scripts)
  foreach(_kind SCRIPTS RESOURCES)
    if(_kind STREQUAL "SCRIPTS")
      set(_files ${_scripts})
    else()
      set(_files ${MY_SLICER_RESOURCES})
    endif()
    foreach(_file IN LISTS _files)
      _slicer_standin_existing_file(_source ${_kind} "${_file}")
      file(RELATIVE_PATH _relative "${CMAKE_CURRENT_SOURCE_DIR}" "${_source}")
      set(_output "${_destination}/${_relative}")
      add_custom_command(
        OUTPUT "${_output}"
        COMMAND ${CMAKE_COMMAND} -E copy_if_different "${_source}" "${_output}"
        DEPENDS "${_source}"
        COMMENT "Copying ${MY_SLICER_NAME}/${_relative}"
        VERBATIM)
      list(APPEND _outputs "${_output}")
      if(_kind STREQUAL "SCRIPTS")
        list(APPEND _built_scripts "${_output}")
      endif()
      get_filename_component(_relative_dir "${_relative}" DIRECTORY)
      install(FILES "${_output}"
        DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_relative_dir}"
        COMPONENT RuntimeLibraries)
    endforeach()
  endforeach()
  add_custom_target(${MY_SLICER_TARGET_NAME} ALL DEPENDS ${_outputs})

  if(BUILD_TESTING AND MY_SLICER_WITH_GENERIC_TESTS)
    # Slicer's generic test loads the module in Slicer; without Slicer, check every shipped
    # script at least compiles, and register the real test as disabled so it is visible.
    if(Python3_Interpreter_FOUND)
      add_test(NAME py_compile_${MY_SLICER_NAME}
        COMMAND ${Python3_EXECUTABLE} -m py_compile ${_built_scripts})
    endif()
    add_test(NAME py_nomainwindow_qSlicer${MY_SLICER_NAME}ModuleGenericTest
      COMMAND ${CMAKE_COMMAND} -E echo "needs a Slicer application")
    set_tests_properties(py_nomainwindow_qSlicer${MY_SLICER_NAME}ModuleGenericTest PROPERTIES DISABLED TRUE)
  endif()
endfunction()

# slicer_add_python_unittest(SCRIPT <file> [SLICER_ARGS ...] [TESTNAME_PREFIX <prefix>])
# Slicer runs the script's ScriptedLoadableModuleTest inside the application; the stand-in
# registers the test (disabled: there is no application) after checking the script exists.
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT MY_SCRIPT)
    message(FATAL_ERROR "slicer_add_python_unittest: SCRIPT is mandatory")
  endif()
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
    message(FATAL_ERROR "slicer_add_python_unittest given nonexistent file '${MY_SCRIPT}'")
  endif()
  get_filename_component(_name "${MY_SCRIPT}" NAME_WE)
  set(_test "py_${MY_TESTNAME_PREFIX}${_name}")
  add_test(NAME ${_test} COMMAND ${CMAKE_COMMAND} -E echo "runs inside Slicer: Slicer --testing")
  set_tests_properties(${_test} PROPERTIES DISABLED TRUE)
endfunction()
